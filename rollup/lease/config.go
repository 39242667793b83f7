package lease

import (
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
)

// Config configures a Manager. Start from DefaultConfig or RegisterFlags. The number of
// partitions is not configurable: it is proto.Partitions, which the NATS subject mapping
// uses too.
type Config struct {
	// Bucket is the JetStream KV bucket holding the leases; the Manager creates it if
	// missing.
	Bucket string
	// WorkerID names this worker; it must be unique among running workers (default:
	// DefaultWorkerID).
	WorkerID string
	// TTL is how long a lease lasts without renewal. A worker whose renewals are delayed
	// (a starved process, a slow server) keeps its leases for TTL − Margin − Heartbeat
	// of delay; a worker that is connected but stuck loses them after TTL + Tick.
	TTL time.Duration
	// Heartbeat is how often leases and the worker's heartbeat are renewed.
	Heartbeat time.Duration
	// ProbeAfter is how long a worker's heartbeat may go unrenewed before the others ask
	// NATS whether the worker is still connected; if its connection is gone (the process
	// died or was cut off) its leases are taken over at once instead of after TTL. A dead
	// worker's partitions are owned again within about ProbeAfter + Tick.
	ProbeAfter time.Duration
	// Margin is how much earlier than TTL after a renewal the owner gives a lease up; it
	// absorbs the time a renewal takes to reach other workers.
	Margin time.Duration
	// Tick is the period of the claim and expiry checks.
	Tick time.Duration
	// Replicas of the bucket (1 for a single server, 3 for a cluster that survives the loss
	// of a server).
	Replicas int
}

// DefaultConfig returns the defaults that RegisterFlags registers (WorkerID empty).
func DefaultConfig() Config {
	return Config{
		Bucket:     "herd_leases",
		TTL:        3 * time.Second,
		Heartbeat:  400 * time.Millisecond,
		ProbeAfter: time.Second,
		Margin:     500 * time.Millisecond,
		Tick:       100 * time.Millisecond,
		Replicas:   1,
	}
}

// RegisterFlags registers the -leases.* flags and -worker.id on fs, writing into c.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	d := DefaultConfig()
	fs.StringVar(&c.Bucket, "leases.bucket", d.Bucket, "JetStream KV `bucket` of the partition leases")
	fs.StringVar(&c.WorkerID, "worker.id", "", "unique `id` of this rollup worker (default hostname-pid-random)")
	fs.DurationVar(&c.TTL, "leases.ttl", d.TTL, "a partition lease lasts this long without renewal; a stuck worker's partitions move after it (duration)")
	fs.DurationVar(&c.Heartbeat, "leases.heartbeat", d.Heartbeat, "how often leases are renewed (duration)")
	fs.DurationVar(&c.ProbeAfter, "leases.probe-after", d.ProbeAfter, "a worker silent this long is probed; if its NATS connection is gone its partitions move at once (duration)")
	fs.DurationVar(&c.Margin, "leases.margin", d.Margin, "an owner gives a lease up this long before others may claim it (duration)")
	fs.DurationVar(&c.Tick, "leases.tick", d.Tick, "period of the claim and expiry checks (duration)")
	fs.IntVar(&c.Replicas, "leases.replicas", d.Replicas, "replicas of the lease bucket: 1, or 3 in a NATS cluster (count)")
}

// Validate checks c and names the offending flag. An empty WorkerID is valid: New fills in
// DefaultWorkerID.
func (c *Config) Validate() error {
	switch {
	case c.Bucket == "" || strings.ContainsAny(c.Bucket, ". *>\t\r\n"):
		return fmt.Errorf("-leases.bucket %q must be a non-empty name without '.', '*', '>' or spaces", c.Bucket)
	case strings.ContainsAny(c.WorkerID, ". *>\t\r\n"):
		return fmt.Errorf("-worker.id %q must not hold '.', '*', '>' or spaces", c.WorkerID)
	case c.Margin <= 0 || c.TTL <= c.Margin:
		return fmt.Errorf("-leases.margin %s must be positive and shorter than -leases.ttl %s", c.Margin, c.TTL)
	case c.Heartbeat <= 0 || 2*c.Heartbeat > c.TTL-c.Margin:
		return fmt.Errorf("-leases.heartbeat %s must be positive and at most half of -leases.ttl − -leases.margin (%s)", c.Heartbeat, c.TTL-c.Margin)
	case c.ProbeAfter < 2*c.Heartbeat || c.ProbeAfter > c.TTL:
		return fmt.Errorf("-leases.probe-after %s must be between twice -leases.heartbeat (%s) and -leases.ttl %s", c.ProbeAfter, 2*c.Heartbeat, c.TTL)
	case c.Tick <= 0 || c.Tick > c.Heartbeat:
		return fmt.Errorf("-leases.tick %s must be positive and at most -leases.heartbeat %s", c.Tick, c.Heartbeat)
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("-leases.replicas %d must be between 1 and 5", c.Replicas)
	}
	return nil
}

// DefaultWorkerID returns hostname-pid-<8 random hex digits>, with the characters a KV key
// cannot hold replaced by '-'.
func DefaultWorkerID() string {
	h, err := os.Hostname()
	if err != nil || h == "" {
		h = "worker"
	}
	h = strings.NewReplacer(".", "-", " ", "-", "*", "-", ">", "-").Replace(h)
	return h + "-" + strconv.Itoa(os.Getpid()) + "-" + uuid.NewString()[:8]
}
