package signals

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/herd-dev/herd/proto"
)

// MatchOp is the operator of a label matcher.
type MatchOp string

// Label matcher operators, as in Prometheus.
const (
	MatchEqual     MatchOp = "="
	MatchNotEqual  MatchOp = "!="
	MatchRegexp    MatchOp = "=~"
	MatchNotRegexp MatchOp = "!~"
)

// Matcher is one label matcher of a Selector. A label a series does not have has the value
// "" (so `x!="y"` matches a series without x, and `code=~"5.."` does not).
type Matcher struct {
	Name  string
	Op    MatchOp
	Value string
	re    *regexp.Regexp // anchored; set for =~ and !~
}

// Matches reports whether the label value v satisfies m.
func (m *Matcher) Matches(v string) bool {
	switch m.Op {
	case MatchEqual:
		return v == m.Value
	case MatchNotEqual:
		return v != m.Value
	case MatchRegexp:
		return m.re.MatchString(v)
	case MatchNotRegexp:
		return !m.re.MatchString(v)
	}
	return false
}

// Selector picks the series of a window that play one role (requests, errors or latency), in
// the Prometheus series selector syntax:
//
//	name{label="v",code=~"5..",x!="y",y!~"re"}
//
// The metric name is required; the braces are optional; values are quoted with " or ' and
// may use the escapes \\, \", \' and \n; regular expressions are RE2 and anchored at both
// ends, as in Prometheus. Names in OpenTelemetry's form, with dots, are written as they are
// (http.server.request.duration{http.response.status_code=~"5.."}) or quoted as in
// Prometheus 3 ({"http.server.request.duration","http.response.status_code"=~"5.."}).
// A Selector is immutable and safe for concurrent use.
type Selector struct {
	Name     string
	Matchers []Matcher
	text     string
}

// String returns the selector as it was parsed.
func (s *Selector) String() string { return s.text }

// MustSelector parses a selector known to be valid, and panics otherwise.
func MustSelector(text string) *Selector {
	s, err := ParseSelector(text)
	if err != nil {
		panic("BUG: " + err.Error())
	}
	return s
}

// ParseSelector parses a series selector. Errors name the offending position.
func ParseSelector(text string) (*Selector, error) {
	p := selParser{s: text}
	sel, err := p.parse()
	if err != nil {
		return nil, fmt.Errorf("cannot parse selector %q: %w", text, err)
	}
	sel.text = text
	return sel, nil
}

type selParser struct {
	s   string
	pos int
}

func (p *selParser) errorf(format string, args ...any) error {
	return fmt.Errorf("at offset %d: %s", p.pos, fmt.Sprintf(format, args...))
}

func (p *selParser) skipSpace() {
	for p.pos < len(p.s) && (p.s[p.pos] == ' ' || p.s[p.pos] == '\t') {
		p.pos++
	}
}

// ident reads a bare name: a Prometheus name, or an OpenTelemetry one with dots (never
// leading).
func (p *selParser) ident(metric bool) string {
	start := p.pos
	for p.pos < len(p.s) {
		c := p.s[p.pos]
		ok := c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' ||
			p.pos > start && (c >= '0' && c <= '9' || c == '.') || metric && c == ':'
		if !ok {
			break
		}
		p.pos++
	}
	return p.s[start:p.pos]
}

// quotedAhead reports whether a quoted string starts at the current position.
func (p *selParser) quotedAhead() bool {
	return p.pos < len(p.s) && (p.s[p.pos] == '"' || p.s[p.pos] == '\'')
}

func (p *selParser) parse() (*Selector, error) {
	p.skipSpace()
	sel := &Selector{Name: p.ident(true)}
	if sel.Name == "" && !(p.pos < len(p.s) && p.s[p.pos] == '{') {
		if p.pos >= len(p.s) {
			return nil, p.errorf("empty selector: want a metric name")
		}
		return nil, p.errorf("want a metric name, got %q", p.s[p.pos])
	}
	p.skipSpace()
	if p.pos == len(p.s) {
		return sel, nil
	}
	if p.s[p.pos] != '{' {
		return nil, p.errorf("want '{' or the end after the metric name, got %q", p.s[p.pos])
	}
	p.pos++
	seen := map[string]bool{}
	if sel.Name == "" {
		// Prometheus 3: the name quoted as the first element, {"name", label="v"}.
		p.skipSpace()
		if !p.quotedAhead() {
			return nil, p.errorf("want a metric name")
		}
		name, err := p.quoted()
		if err != nil {
			return nil, err
		}
		if name == "" {
			return nil, p.errorf("empty metric name")
		}
		sel.Name = name
		p.skipSpace()
		if p.pos < len(p.s) && p.s[p.pos] == ',' {
			p.pos++
		} else if p.pos >= len(p.s) || p.s[p.pos] != '}' {
			return nil, p.errorf("want ',' or '}' after the quoted metric name")
		}
	}
	for {
		p.skipSpace()
		if p.pos < len(p.s) && p.s[p.pos] == '}' {
			p.pos++
			break
		}
		m, err := p.matcher()
		if err != nil {
			return nil, err
		}
		key := m.Name + string(m.Op)
		if seen[key] {
			return nil, p.errorf("matcher %s%s given twice", m.Name, m.Op)
		}
		seen[key] = true
		sel.Matchers = append(sel.Matchers, m)
		p.skipSpace()
		if p.pos >= len(p.s) {
			return nil, p.errorf("missing '}'")
		}
		switch p.s[p.pos] {
		case ',':
			p.pos++
		case '}':
		default:
			return nil, p.errorf("want ',' or '}' after a matcher, got %q", p.s[p.pos])
		}
	}
	p.skipSpace()
	if p.pos != len(p.s) {
		return nil, p.errorf("unexpected %q after '}'", p.s[p.pos:])
	}
	return sel, nil
}

func (p *selParser) matcher() (Matcher, error) {
	var m Matcher
	if p.pos >= len(p.s) {
		return m, p.errorf("missing '}'")
	}
	if p.quotedAhead() {
		name, err := p.quoted()
		if err != nil {
			return m, err
		}
		if name == "" {
			return m, p.errorf("empty label name")
		}
		m.Name = name
	} else {
		m.Name = p.ident(false)
	}
	if m.Name == "" {
		return m, p.errorf("want a label name, got %q", p.s[p.pos])
	}
	if m.Name == "__name__" {
		return m, p.errorf("__name__ matchers are not supported: put the metric name before '{'")
	}
	p.skipSpace()
	switch {
	case strings.HasPrefix(p.s[p.pos:], "=~"):
		m.Op = MatchRegexp
	case strings.HasPrefix(p.s[p.pos:], "!~"):
		m.Op = MatchNotRegexp
	case strings.HasPrefix(p.s[p.pos:], "!="):
		m.Op = MatchNotEqual
	case strings.HasPrefix(p.s[p.pos:], "="):
		m.Op = MatchEqual
	default:
		if p.pos >= len(p.s) {
			return m, p.errorf("missing operator after label %q", m.Name)
		}
		return m, p.errorf("want one of = != =~ !~ after label %q, got %q", m.Name, p.s[p.pos])
	}
	p.pos += len(m.Op)
	p.skipSpace()
	v, err := p.quoted()
	if err != nil {
		return m, err
	}
	m.Value = v
	if m.Op == MatchRegexp || m.Op == MatchNotRegexp {
		re, err := regexp.Compile("^(?:" + v + ")$")
		if err != nil {
			return m, p.errorf("bad regular expression for label %q: %v", m.Name, err)
		}
		m.re = re
	}
	return m, nil
}

func (p *selParser) quoted() (string, error) {
	if p.pos >= len(p.s) || (p.s[p.pos] != '"' && p.s[p.pos] != '\'') {
		return "", p.errorf("want a quoted label value")
	}
	q := p.s[p.pos]
	p.pos++
	var b strings.Builder
	for p.pos < len(p.s) {
		c := p.s[p.pos]
		switch {
		case c == q:
			p.pos++
			return b.String(), nil
		case c == '\\':
			if p.pos+1 >= len(p.s) {
				return "", p.errorf("unterminated escape")
			}
			switch e := p.s[p.pos+1]; e {
			case '\\', '"', '\'':
				b.WriteByte(e)
			case 'n':
				b.WriteByte('\n')
			default:
				return "", p.errorf("unknown escape \\%c", e)
			}
			p.pos += 2
		default:
			b.WriteByte(c)
			p.pos++
		}
	}
	return "", p.errorf("unterminated quoted value")
}

// Matches reports whether a series with the given name and labels is selected.
func (s *Selector) Matches(name string, labels proto.Labels) bool {
	if name != s.Name {
		return false
	}
	for i := range s.Matchers {
		m := &s.Matchers[i]
		if !m.Matches(labelValue(labels, m.Name)) {
			return false
		}
	}
	return true
}

func labelValue(ls proto.Labels, name string) string {
	for _, l := range ls {
		if l.Name == name {
			return l.Value
		}
	}
	return ""
}

// Sum returns the sum over the series of ss that s selects of each counter's value and each
// histogram's observation count (OpenTelemetry's HTTP and RPC conventions count requests
// with their duration histogram), and how many selected series were neither (gauges) or
// carried a negative or NaN value, and were skipped.
func (s *Selector) Sum(ss []proto.WindowSeries) (sum float64, wrongKind int) {
	for i := range ss {
		ws := &ss[i]
		if !s.Matches(ws.Name, ws.Labels) {
			continue
		}
		switch {
		case ws.Kind == proto.KindCounter && ws.Value >= 0:
			sum += ws.Value
		case ws.Kind == proto.KindHistogram && ws.Hist != nil:
			sum += float64(ws.Hist.Count)
		default:
			wrongKind++
		}
	}
	return sum, wrongKind
}

// Merge merges the histogram series of ss that s selects into dst (which it resets first)
// and reports whether any matched, and how many selected series were not histograms (or
// could not be merged) and were skipped.
func (s *Selector) Merge(ss []proto.WindowSeries, dst *proto.Histogram) (found bool, wrongKind int) {
	dst.Reset()
	for i := range ss {
		ws := &ss[i]
		if !s.Matches(ws.Name, ws.Labels) {
			continue
		}
		if ws.Kind != proto.KindHistogram || ws.Hist == nil || !dst.Merge(ws.Hist) {
			wrongKind++
			continue
		}
		found = true
	}
	return found, wrongKind
}
