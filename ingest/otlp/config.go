package otlp

import (
	"flag"
	"fmt"
	"net"
	"strconv"
	"time"
)

// Defaults of Config. The listeners have no default here (a zero Config serves nothing);
// `herd serve` registers its flags with DefaultHTTPListen and DefaultGRPCListen.
const (
	DefaultHTTPListen             = "127.0.0.1:4318"
	DefaultGRPCListen             = "127.0.0.1:4317"
	DefaultMaxRequestBytes        = 4 << 20
	DefaultServiceKey             = "service.name"
	DefaultVersionKey             = "service.version"
	DefaultInstanceKey            = "service.instance.id"
	DefaultMaxInstances           = 100_000
	DefaultMaxInstancesPerService = 10_000
	DefaultMaxSeriesPerInstance   = 2_000
	DefaultMaxSeries              = 1_000_000
	DefaultInstanceTTL            = 10 * time.Minute
	DefaultMaxConns               = 1024
	// DefaultMaxCalleesPerGroup is ingest.DefaultMaxCallees, the Go library's bound.
	DefaultMaxCalleesPerGroup = 64
)

// Config configures a Receiver. Zero fields take their defaults, but for the listeners.
type Config struct {
	// HTTPListen is host:port of the OTLP/HTTP listener (port 0 picks a free one); empty
	// serves no OTLP/HTTP.
	HTTPListen string
	// GRPCListen is host:port of the OTLP/gRPC listener; empty serves no OTLP/gRPC.
	GRPCListen string
	// Token, when set, is the bearer token every request must carry
	// (Authorization: Bearer <token>, as HTTP header or gRPC metadata). Without one, only
	// requests from loopback addresses are taken (reason "unauthorized" for the others).
	Token string
	// MaxConns bounds the open connections of both listeners together; one beyond it is
	// closed at once (reason "too_many_connections").
	MaxConns int
	// MaxRequestBytes bounds one request's body, after decompression (reason "oversized").
	MaxRequestBytes int
	// ServiceKey, VersionKey and InstanceKey are the resource attributes naming the service,
	// the version and the instance. A resource without the instance attribute is identified
	// by all of its attributes together.
	ServiceKey, VersionKey, InstanceKey string
	// MaxInstances bounds the instances whose state the receiver keeps; MaxInstancesPerService
	// those of one service (reason "too_many_instances").
	MaxInstances           int
	MaxInstancesPerService int
	// MaxSeriesPerInstance bounds the series of one instance (reason "too_many_series"); it
	// is at most proto.MaxSeries, the series of one batch. MaxSeries bounds the series of all
	// instances together.
	MaxSeriesPerInstance int
	MaxSeries            int
	// InstanceTTL is how long an instance's state is kept after its last request.
	InstanceTTL time.Duration
	// MaxCalleesPerGroup bounds the distinct callees of one group's edges taken from
	// OpenTelemetry client metrics (edges.go); calls to further callees are recorded under
	// callee proto.CalleeOther (herd_otlp_edge_points_other_total{reason="too_many_callees"}).
	MaxCalleesPerGroup int
	// RPCCalleeFromAddress names the callee of RPC client metrics by the server's host
	// (server.address, net.peer.name: its first DNS label) rather than by rpc.service, for
	// gRPC services whose names are not the services deployed.
	RPCCalleeFromAddress bool
}

// Enabled reports whether c serves any listener.
func (c *Config) Enabled() bool { return c.HTTPListen != "" || c.GRPCListen != "" }

// RegisterFlags registers the -otlp.* flags on fs, writing into c; the listeners' defaults
// are c's current values.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.HTTPListen, "otlp.http", c.HTTPListen, "OTLP/HTTP listener for metrics, POST /v1/metrics in protobuf or JSON (`host:port`, port 0 picks a free one; empty: off)")
	fs.StringVar(&c.GRPCListen, "otlp.grpc", c.GRPCListen, "OTLP/gRPC listener for metrics (`host:port`, port 0 picks a free one; empty: off)")
	fs.StringVar(&c.Token, "otlp.token", "", "bearer `token` every OTLP request must carry (prefer the environment variable; empty: OTLP only from loopback addresses)")
	fs.IntVar(&c.MaxConns, "otlp.max-conns", DefaultMaxConns, "open connections of the OTLP listeners together; one beyond is closed at once (`count`)")
	fs.IntVar(&c.MaxRequestBytes, "otlp.max-request-bytes", DefaultMaxRequestBytes, "largest OTLP request body, after decompression (`bytes`)")
	fs.StringVar(&c.ServiceKey, "otlp.service-attribute", DefaultServiceKey, "resource attribute `key` naming the service")
	fs.StringVar(&c.VersionKey, "otlp.version-attribute", DefaultVersionKey, "resource attribute `key` naming the version (e.g. k8s.deployment.name or a pod-template-hash label)")
	fs.StringVar(&c.InstanceKey, "otlp.instance-attribute", DefaultInstanceKey, "resource attribute `key` naming the instance (without it, all resource attributes together do)")
	fs.IntVar(&c.MaxInstances, "otlp.max-instances", DefaultMaxInstances, "instances whose cumulative state the OTLP receiver keeps (`count`)")
	fs.IntVar(&c.MaxInstancesPerService, "otlp.max-instances-per-service", DefaultMaxInstancesPerService, "instances of one service the OTLP receiver keeps (`count`)")
	fs.IntVar(&c.MaxSeriesPerInstance, "otlp.max-series-per-instance", DefaultMaxSeriesPerInstance, "series of one OTLP instance (`count`, at most 4096)")
	fs.IntVar(&c.MaxSeries, "otlp.max-series", DefaultMaxSeries, "series of all OTLP instances together whose state the receiver keeps (`count`)")
	fs.IntVar(&c.MaxCalleesPerGroup, "otlp.max-callees-per-group", DefaultMaxCalleesPerGroup, "distinct callees of one group's edges from OpenTelemetry client metrics; calls to others count under callee _other (`count`)")
	fs.BoolVar(&c.RPCCalleeFromAddress, "otlp.rpc-callee-from-address", false, "name the callee of RPC client metrics (rpc.client.duration …) by server.address's first DNS label rather than by rpc.service")
	fs.DurationVar(&c.InstanceTTL, "otlp.instance-ttl", DefaultInstanceTTL, "how long an OTLP instance's state is kept after its last export (`duration`)")
}

func (c *Config) setDefaults() {
	if c.MaxRequestBytes == 0 {
		c.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if c.ServiceKey == "" {
		c.ServiceKey = DefaultServiceKey
	}
	if c.VersionKey == "" {
		c.VersionKey = DefaultVersionKey
	}
	if c.InstanceKey == "" {
		c.InstanceKey = DefaultInstanceKey
	}
	if c.MaxInstances == 0 {
		c.MaxInstances = DefaultMaxInstances
	}
	if c.MaxInstancesPerService == 0 {
		c.MaxInstancesPerService = DefaultMaxInstancesPerService
	}
	if c.MaxSeriesPerInstance == 0 {
		c.MaxSeriesPerInstance = DefaultMaxSeriesPerInstance
	}
	if c.InstanceTTL == 0 {
		c.InstanceTTL = DefaultInstanceTTL
	}
	if c.MaxSeries == 0 {
		c.MaxSeries = DefaultMaxSeries
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.MaxCalleesPerGroup == 0 {
		c.MaxCalleesPerGroup = DefaultMaxCalleesPerGroup
	}
}

// Validate checks the config, naming the offending flag; zero fields take their defaults.
func (c *Config) Validate() error {
	d := *c
	d.setDefaults()
	for _, l := range []struct{ flag, hp string }{{"-otlp.http", d.HTTPListen}, {"-otlp.grpc", d.GRPCListen}} {
		if l.hp == "" {
			continue
		}
		_, p, err := net.SplitHostPort(l.hp)
		if err != nil {
			return fmt.Errorf("%s: cannot parse %q as host:port: %w", l.flag, l.hp, err)
		}
		if port, err := strconv.Atoi(p); err != nil || port < 0 || port > 65535 {
			return fmt.Errorf("%s: bad port in %q", l.flag, l.hp)
		}
	}
	if d.HTTPListen != "" && d.HTTPListen == d.GRPCListen && !hasPortZero(d.HTTPListen) {
		return fmt.Errorf("-otlp.http and -otlp.grpc must differ (both %s)", d.HTTPListen)
	}
	switch {
	case d.MaxRequestBytes < 1<<10 || d.MaxRequestBytes > 256<<20:
		return fmt.Errorf("-otlp.max-request-bytes %d must be between 1 KiB and 256 MiB", d.MaxRequestBytes)
	case d.MaxInstances < 1 || d.MaxInstancesPerService < 1:
		return fmt.Errorf("-otlp.max-instances %d and -otlp.max-instances-per-service %d must be ≥ 1", d.MaxInstances, d.MaxInstancesPerService)
	case d.MaxSeriesPerInstance < 1 || d.MaxSeriesPerInstance > maxSeriesPerBatch:
		return fmt.Errorf("-otlp.max-series-per-instance %d must be between 1 and %d", d.MaxSeriesPerInstance, maxSeriesPerBatch)
	case d.MaxSeries < 1:
		return fmt.Errorf("-otlp.max-series %d must be ≥ 1", d.MaxSeries)
	case d.MaxCalleesPerGroup < 1:
		return fmt.Errorf("-otlp.max-callees-per-group %d must be ≥ 1", d.MaxCalleesPerGroup)
	case d.MaxConns < 1:
		return fmt.Errorf("-otlp.max-conns %d must be ≥ 1", d.MaxConns)
	case d.InstanceTTL < time.Second:
		return fmt.Errorf("-otlp.instance-ttl %s must be at least 1s", d.InstanceTTL)
	case d.ServiceKey == d.VersionKey:
		return fmt.Errorf("-otlp.service-attribute and -otlp.version-attribute must differ (both %q)", d.ServiceKey)
	}
	return nil
}

func hasPortZero(hp string) bool {
	_, p, _ := net.SplitHostPort(hp)
	return p == "0"
}
