// Command shots captures the dashboard's three pages, in light and dark mode, from a running
// herd (herd demo or herd serve) with Debian's chromium:
//
//	go run ./web/internal/shots -url http://127.0.0.1:8080 -service checkout -out docs/screenshots
//
// It writes overview-{light,dark}.png, service-{light,dark}.png and decisions-{light,dark}.png.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
)

func main() {
	base := flag.String("url", "http://127.0.0.1:8080", "base `URL` of herd's HTTP listener")
	service := flag.String("service", "checkout", "service whose page is captured (name)")
	out := flag.String("out", "docs/screenshots", "output `directory`")
	chromium := flag.String("chromium", "/usr/bin/chromium", "chromium `path`")
	token := flag.String("token", os.Getenv("HERD_HTTP_TOKEN"), "bearer token, if the dashboard needs one")
	wait := flag.Duration("wait", 20*time.Second, "how long to wait for each page's data (duration)")
	rangeS := flag.Int("range", 60, "time range of the service page's charts (seconds: 60, 300 or 900)")
	flag.Parse()
	if err := run(*base, *service, *out, *chromium, *token, *wait, *rangeS); err != nil {
		log.Fatal(err)
	}
}

func run(base, service, out, chromium, token string, wait time.Duration, rangeS int) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("cannot create %s: %w", out, err)
	}
	dir, err := os.MkdirTemp("", "herd-shots-")
	if err != nil {
		return fmt.Errorf("cannot create a chromium profile: %w", err)
	}
	defer os.RemoveAll(dir)
	actx, acancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium),
		chromedp.Flag("headless", true), chromedp.Flag("no-sandbox", true), chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true), chromedp.Flag("no-first-run", true),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(dir), chromedp.WindowSize(1400, 1000))
	defer acancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	if err := chromedp.Do(ctx); err != nil {
		return fmt.Errorf("cannot start chromium: %w", err)
	}
	q := fmt.Sprintf("?range=%d", rangeS)
	if token != "" {
		q += "&token=" + token
	}
	pages := []struct{ name, path, ready string }{
		{"overview", "/" + q, `document.querySelectorAll('a.tile').length > 0`},
		{"service", "/services/" + service + q, `(window.__herd.chartPoints || 0) > 40`},
		{"decisions", "/decisions" + q, `!!document.querySelector('[data-decision], .empty:not([hidden])') && !document.body.innerText.includes('Loading')`},
	}
	for _, scheme := range []string{"light", "dark"} {
		for _, p := range pages {
			png, err := shoot(ctx, base+p.path, scheme, p.ready, wait)
			if err != nil {
				return fmt.Errorf("cannot capture %s (%s): %w", p.name, scheme, err)
			}
			file := filepath.Join(out, p.name+"-"+scheme+".png")
			if err := os.WriteFile(file, png, 0o644); err != nil {
				return fmt.Errorf("cannot write %s: %w", file, err)
			}
			fmt.Println(file)
		}
	}
	return nil
}

// shoot loads url with the colour scheme, waits until ready is true (and a little more for
// live charts to fill), and captures the page.
func shoot(ctx context.Context, url, scheme, ready string, wait time.Duration) ([]byte, error) {
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, _ *chromedp.Target) error {
		_, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: scheme}}})
		return err
	}), chromedp.Navigate(url))
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(wait)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](ready))
		if err == nil && ok {
			break
		}
		if time.Now().After(deadline) {
			return nil, errors.New("the page did not get its data in time: " + ready)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(time.Second)
	return chromedp.Run(ctx, chromedp.FullScreenshot(100))
}
