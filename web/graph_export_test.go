package web

import "testing"

// EvalString evaluates a JS expression giving a string.
func (b *Browser) EvalString(t *testing.T, expr string) string {
	t.Helper()
	return eval[string](t, b.b, expr)
}

// ShootGraph writes light and dark screenshots of the graph page as
// $HERD_SCREENSHOTS/<name>-{light,dark}.png when HERD_SCREENSHOTS names a directory.
func (b *Browser) ShootGraph(t *testing.T, name string) {
	t.Helper()
	shoot(t, b.b, name)
}
