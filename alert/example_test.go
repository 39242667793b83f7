package alert_test

import (
	"fmt"

	"github.com/herd-dev/herd/alert"
	"github.com/herd-dev/herd/proto"
)

func ExampleParseSelector() {
	sel, err := alert.ParseSelector(`http_requests_total{code=~"5.."}`)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(sel.Matches("http_requests_total", proto.Labels{{Name: "code", Value: "503"}}))
	fmt.Println(sel.Matches("http_requests_total", proto.Labels{{Name: "code", Value: "200"}}))
	_, err = alert.ParseSelector(`http_requests_total{code=5}`)
	fmt.Println(err)
	// Output:
	// true
	// false
	// cannot parse selector "http_requests_total{code=5}": at offset 25: want a quoted label value
}

func ExampleEProcess() {
	// One window: 100 requests per group, 1 baseline error, 3 canary errors, margin ψ0 = 1.
	p := alert.NewEProcess(1)
	p.Update(100, 100, 1, 3)
	fmt.Printf("%.4f\n", p.E())
	// Output: 1.3414
}
