package ingest_test

import (
	"fmt"
	"time"

	"github.com/herd-dev/herd/ingest"
	"github.com/herd-dev/herd/proto"
)

// Example instruments a request handler with the RED helper and publishes batches. A real
// program passes nats.Conn.Publish as Publish and calls Run(ctx) in a goroutine; here the
// batches are flushed by hand and printed.
func Example() {
	start := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	c, err := ingest.NewClient(ingest.ClientConfig{
		Service: "checkout",
		Version: "1.4.2",
		Start:   start,
		Publish: func(subject string, data []byte) error { return nil }, // nc.Publish
		OnBatch: func(b *proto.Batch, err error) {
			fmt.Printf("batch %d final=%v err=%v\n", b.Seq, b.Final, err)
			for _, s := range b.Series {
				if s.Kind == proto.KindHistogram {
					fmt.Printf("  %s count=%d p50≈%.3fs\n", s.String(), s.Hist.Count, s.Hist.Quantile(0.5))
				} else {
					fmt.Printf("  %s %s %v\n", s.String(), s.Kind, s.Value)
				}
			}
		},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println("subject:", c.Subject())

	red := c.RED()
	inflight := c.Gauge("inflight_requests")
	for i := range 4 {
		inflight.Add(1)
		red.Observe(time.Duration(20+10*i)*time.Millisecond, i == 3)
		inflight.Add(-1)
	}
	_ = c.Flush(start.Add(250*time.Millisecond), false)
	_ = c.Close() // the final batch, with nothing new in it
	// Output:
	// subject: herd.in.checkout.1_2e4_2e2
	// batch 0 final=false err=<nil>
	//   requests_total counter 4
	//   errors_total counter 1
	//   latency_seconds count=4 p50≈0.030s
	//   inflight_requests gauge 0
	// batch 1 final=true err=<nil>
	//   inflight_requests gauge 0
}
