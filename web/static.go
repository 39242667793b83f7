package web

import (
	"embed"
	"io/fs"
	"net/http"
)

// assets holds the dashboard: plain ES modules, CSS and the vendored uPlot library.
//
//go:embed static
var assets embed.FS

// staticHandler serves /static/… from the embedded files.
func staticHandler() http.Handler {
	return http.FileServerFS(assets)
}

// serveIndex serves the dashboard's single page for every page route; the page reads its
// state from the URL.
func serveIndex(w http.ResponseWriter, r *http.Request) {
	b, err := fs.ReadFile(assets, "static/index.html")
	if err != nil {
		http.Error(w, errNoIndex.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-cache")
	_, _ = w.Write(b)
}
