package web

import (
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// Browser is the headless chromium of the browser tests, for the external test package
// (whose end-to-end tests run a whole node, which imports web).
type Browser struct{ b *browser }

// NewBrowser starts a headless chromium for t (see newBrowser).
func NewBrowser(t *testing.T) *Browser { return &Browser{newBrowser(t)} }

// Navigate opens url.
func (b *Browser) Navigate(t *testing.T, url string) {
	t.Helper()
	b.b.do(t, 20*time.Second, chromedp.Navigate(url))
}

// WaitJS polls a JS boolean expression until it is true.
func (b *Browser) WaitJS(t *testing.T, timeout time.Duration, expr string) {
	t.Helper()
	b.b.waitJS(t, timeout, expr)
}

// EvalStrings evaluates a JS expression giving an array of strings.
func (b *Browser) EvalStrings(t *testing.T, expr string) []string {
	t.Helper()
	return eval[[]string](t, b.b, expr)
}

// EvalFloats evaluates a JS expression giving an array of numbers.
func (b *Browser) EvalFloats(t *testing.T, expr string) []float64 {
	t.Helper()
	return eval[[]float64](t, b.b, expr)
}
