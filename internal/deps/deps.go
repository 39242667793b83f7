// Package deps pins the modules herd's packages are about to use while they are being
// written in parallel; it is deleted once every module is imported for real.
package deps

import (
	_ "github.com/VictoriaMetrics/metrics"
	_ "github.com/chromedp/chromedp"
	_ "github.com/google/uuid"
	_ "github.com/gorilla/websocket"
	_ "github.com/hashicorp/golang-lru/v2/expirable"
	_ "github.com/nats-io/nats.go/jetstream"
	_ "github.com/prometheus/client_model/go"
	_ "github.com/prometheus/common/expfmt"
)
