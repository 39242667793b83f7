// Command herd is herd's single binary: the demo, the all-in-one server, the agent, the
// simulated fleet, the window tail and the benchmarks. It only wires the packages together.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], osEnv())
	stop()
	os.Exit(code)
}
