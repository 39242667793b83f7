// Package promhelp gives herd's self-metrics their Prometheus HELP text.
//
// VictoriaMetrics/metrics writes a "# HELP <family>" and a "# TYPE <family> <type>" line
// before each family when metadata is exposed (metrics.ExposeMetadata), but it keeps no help
// text: its HELP line names the family and nothing else. So a component describes the
// families it registers with Describe, next to the code that registers them, and /metrics is
// written with WritePrometheus, which fills the text in.
//
// The descriptions are process-wide, like the library's metadata switch: a family name is
// herd-wide (herd_<component>_<noun>…), so its text is too. Components describing the same
// family should say the same thing; the last description wins.
package promhelp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strings"
	"sync"

	"github.com/VictoriaMetrics/metrics"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

var (
	mu sync.RWMutex // Guards help.
	// help maps a metric family (the name without labels or histogram suffixes) to its text.
	help = map[string]string{}
)

// Describe records the HELP text of metric families, by family name (a histogram's name
// without _bucket, _sum or _count). A component calls it when it builds its metrics, before
// they are first written. It is safe for concurrent use.
func Describe(families map[string]string) {
	mu.Lock()
	defer mu.Unlock()
	for f, text := range families {
		help[f] = text
	}
}

// Text returns the described HELP text of family, or "" if it has none.
func Text(family string) string {
	mu.RLock()
	defer mu.RUnlock()
	return help[family]
}

// WritePrometheus writes the metrics of sets to w in the Prometheus text format: every family
// has a "# TYPE" line and a "# HELP" line with its described text. It turns the library's
// metadata on for the whole process (metrics.ExposeMetadata(true)), so that everything else
// written after it, such as metrics.WriteProcessMetrics, carries TYPE lines too: herd always
// exposes metadata. A family without a description keeps the library's bare HELP line.
func WritePrometheus(w io.Writer, sets ...*metrics.Set) {
	metrics.ExposeMetadata(true)
	var buf bytes.Buffer
	for _, s := range sets {
		if s != nil {
			s.WritePrometheus(&buf)
		}
	}
	fill(w, buf.Bytes())
}

// fill copies the exposition text in to w, adding the described text to bare HELP lines.
func fill(w io.Writer, in []byte) {
	bw := bufio.NewWriter(w)
	mu.RLock()
	for len(in) > 0 {
		line := in
		rest := []byte(nil)
		if i := bytes.IndexByte(in, '\n'); i >= 0 {
			line, rest = in[:i], in[i+1:]
		}
		in = rest
		if family, ok := bytes.CutPrefix(line, []byte("# HELP ")); ok && bytes.IndexByte(family, ' ') < 0 {
			if text := help[string(family)]; text != "" {
				bw.Write(line)
				bw.WriteByte(' ')
				bw.WriteString(escape(text))
				bw.WriteByte('\n')
				continue
			}
		}
		bw.Write(line)
		bw.WriteByte('\n')
	}
	mu.RUnlock()
	bw.Flush()
}

// escaper escapes what the text format wants escaped in a HELP text: backslash and line feed.
var escaper = strings.NewReplacer(`\`, `\\`, "\n", `\n`)

func escape(s string) string { return escaper.Replace(s) }

// Check parses exposition text as Prometheus does (expfmt's text parser) and reports every
// family that has no described HELP text or no TYPE, and every histogram without
// cumulative "le" buckets up to +Inf. Components' tests run it on their rendered metrics.
func Check(exposition []byte) error {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(exposition))
	if err != nil {
		return fmt.Errorf("cannot parse metrics: %w", err)
	}
	var errs []error
	names := slices.Sorted(maps.Keys(families))
	for _, name := range names {
		mf := families[name]
		if h := mf.GetHelp(); h == "" || h == name {
			errs = append(errs, fmt.Errorf("%s: no HELP text", name))
		}
		switch mf.GetType() {
		case dto.MetricType_UNTYPED:
			errs = append(errs, fmt.Errorf("%s: no TYPE", name))
		case dto.MetricType_HISTOGRAM:
			for _, m := range mf.GetMetric() {
				bs := m.GetHistogram().GetBucket()
				if len(bs) < 2 || !math.IsInf(bs[len(bs)-1].GetUpperBound(), 1) {
					errs = append(errs, fmt.Errorf("%s%v: want le buckets up to +Inf, got %d buckets", name, m.GetLabel(), len(bs)))
				}
			}
		}
	}
	return errors.Join(errs...)
}
