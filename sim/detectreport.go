package sim

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"text/tabwriter"
)

// DetectResult is the outcome of one BenchDetect scenario at one canary share.
type DetectResult struct {
	Scenario   string  `json:"scenario"`
	Share      float64 `json:"canary_share"`
	Regression bool    `json:"regression"`
	Trials     int     `json:"trials"`
	Rollbacks  int     `json:"rollbacks"`
	Passes     int     `json:"passes"`
	Undecided  int     `json:"undecided"`
	// RollbackRate is Rollbacks/Trials; for A/A scenarios it is the false-rollback rate and
	// RollbackRateUpper95 its 95 % upper confidence bound (Wilson).
	RollbackRate        float64 `json:"rollback_rate"`
	RollbackRateUpper95 float64 `json:"rollback_rate_upper95"`
	// Detection times of the rollbacks, seconds from the canary's first window (0 if none).
	MedianSeconds float64 `json:"median_s"`
	P90Seconds    float64 `json:"p90_s"`
	// Times to pass, seconds from the canary's first window (0 if none).
	PassMedianSeconds float64 `json:"pass_median_s"`
	PassP90Seconds    float64 `json:"pass_p90_s"`
	// Decisive counts rollbacks by the test or guard that decided.
	Decisive map[string]int `json:"decisive"`
	// Margin is the largest margin ψ0 the comparisons used (it depends on the instance
	// counts; proto.Evidence.Margin); 0 when no trial's tests started.
	Margin float64 `json:"margin"`
	// OracleMedianSeconds is the median time of the oracle (a sequential probability ratio
	// test that knows the effect; realistic suite, regressions) over the OracleDecided trials
	// in which it decided.
	OracleMedianSeconds float64 `json:"oracle_median_s,omitempty"`
	OracleDecided       int     `json:"oracle_decided,omitempty"`
	// OracleMarginMedianSeconds is the median time of the same oracle tested against the
	// margin ψ0 the comparison held (its effect's test's margin) instead of "no worse",
	// over the OracleMarginDecided trials in which it decided: what a method that knew the
	// effect but had to hold herd's margin would need.
	OracleMarginMedianSeconds float64 `json:"oracle_margin_median_s,omitempty"`
	OracleMarginDecided       int     `json:"oracle_margin_decided,omitempty"`
}

// DetectReport is the result of BenchDetect.
type DetectReport struct {
	// Suite is "realistic" for BenchRealistic, empty for BenchDetect.
	Suite          string         `json:"suite,omitempty"`
	Alpha          float64        `json:"alpha"`
	RPS            float64        `json:"rps"`
	Duration       string         `json:"duration"`
	Window         string         `json:"window"`
	Warmup         string         `json:"warmup"`
	Trials         int            `json:"trials"`
	Seed           uint64         `json:"seed"`
	BaseErrorRatio float64        `json:"base_error_ratio"`
	Elapsed        string         `json:"elapsed"`
	Results        []DetectResult `json:"results"`
}

// WriteTable prints the report as an aligned text table.
func (r *DetectReport) WriteTable(w io.Writer) error {
	suite := ""
	if r.Suite != "" {
		suite = " (" + r.Suite + " suite)"
	}
	fmt.Fprintf(w, "herd bench detect%s: α=%g, %g rps, %s trials of %s, window %s, warm-up %s, baseline errors %.1f %%, seed %d (%s)\n",
		suite, r.Alpha, r.RPS, fmt.Sprint(r.Trials), r.Duration, r.Window, r.Warmup, 100*r.BaseErrorRatio, r.Seed, r.Elapsed)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\tcanary\tψ0\trollbacks\trate\t(95 % ≤)\tmedian s\tp90 s\tpasses\tpass median s\toracle median s\toracle@ψ0 median s\tdecided by\t")
	secs := func(n int, v float64) string {
		if n == 0 {
			return "-"
		}
		return fmt.Sprintf("%.2f", v)
	}
	for _, res := range r.Results {
		margin := "-"
		if res.Margin > 0 {
			margin = fmt.Sprintf("%.2f", res.Margin)
		}
		var dec []string
		for k, v := range res.Decisive {
			dec = append(dec, fmt.Sprintf("%s:%d", k, v))
		}
		slices.Sort(dec)
		fmt.Fprintf(tw, "%s\t%.3g %%\t%s\t%d/%d\t%.2f %%\t%.2f %%\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t\n",
			res.Scenario, 100*res.Share, margin, res.Rollbacks, res.Trials, 100*res.RollbackRate,
			100*res.RollbackRateUpper95, secs(res.Rollbacks, res.MedianSeconds), secs(res.Rollbacks, res.P90Seconds),
			res.Passes, secs(res.Passes, res.PassMedianSeconds), secs(res.OracleDecided, res.OracleMedianSeconds),
			secs(res.OracleMarginDecided, res.OracleMarginMedianSeconds), strings.Join(dec, " "))
	}
	return tw.Flush()
}

// WriteJSON prints the report as indented JSON.
func (r *DetectReport) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("cannot encode detector bench report: %w", err)
	}
	return nil
}

// quantileOf returns the q-quantile of sorted xs (nearest rank).
func quantileOf(xs []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(xs)))) - 1
	return xs[min(max(i, 0), len(xs)-1)]
}

// wilsonUpper is the upper Wilson score bound of a binomial proportion.
func wilsonUpper(k, n int, z float64) float64 {
	p := float64(k) / float64(n)
	nn := float64(n)
	den := 1 + z*z/nn
	c := p + z*z/(2*nn)
	h := z * math.Sqrt(p*(1-p)/nn+z*z/(4*nn*nn))
	return min((c+h)/den, 1)
}
