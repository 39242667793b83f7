package alert_test

import (
	"fmt"

	"github.com/herd-dev/herd/alert"
)

func ExampleEProcess() {
	// One window: 100 requests per group, 1 baseline error, 3 canary errors, margin ψ0 = 1.
	p := alert.NewEProcess(1)
	p.Update(100, 100, 1, 3)
	fmt.Printf("%.4f\n", p.E())
	// Output: 1.3414
}
