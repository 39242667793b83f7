package signals_test

import (
	"fmt"

	"github.com/herd-dev/herd/proto"
	"github.com/herd-dev/herd/signals"
)

func ExampleParseSelector() {
	sel, err := signals.ParseSelector(`http_requests_total{code=~"5.."}`)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(sel.Matches("http_requests_total", proto.Labels{{Name: "code", Value: "503"}}))
	fmt.Println(sel.Matches("http_requests_total", proto.Labels{{Name: "code", Value: "200"}}))
	_, err = signals.ParseSelector(`http_requests_total{code=5}`)
	fmt.Println(err)
	// Output:
	// true
	// false
	// cannot parse selector "http_requests_total{code=5}": at offset 25: want a quoted label value
}

func ExampleChoice() {
	// A service instrumented with prometheus/client_golang, as herd's agent scrapes it.
	window := []proto.WindowSeries{
		{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "200"}}, Kind: proto.KindCounter, Value: 95},
		{Name: "http_requests_total", Labels: proto.Labels{{Name: "code", Value: "500"}}, Kind: proto.KindCounter, Value: 5},
	}
	var c signals.Choice
	c.Observe(window)
	var v signals.Values
	c.Definition().Read(window, &v)
	fmt.Println(c.Definition())
	fmt.Println(v.Requests, v.Errors)
	// Output:
	// prometheus: requests http_requests_total, errors http_requests_total{code=~"5.."}, latency http_request_duration_seconds
	// 100 5
}
