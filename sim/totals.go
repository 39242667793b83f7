package sim

import "github.com/herd-dev/herd/proto"

// Totals is what a Fleet published for one group, exactly: only batches whose publish
// succeeded count. Its JSON form is the one `herd sim` prints (scripts/check-exact.py reads
// it), so the field names are fixed.
type Totals struct {
	Service          string `json:"service"`
	Version          string `json:"version"`
	Requests         uint64 `json:"requests"`
	Errors           uint64 `json:"errors"`
	LatencyCount     uint64 `json:"latency_count"`
	InstancesStarted uint64 `json:"instances_started"`
	InstancesStopped uint64 `json:"instances_stopped"`
	BatchesSent      uint64 `json:"batches_sent"`
	BatchesUnsent    uint64 `json:"batches_unsent"`
}

// AddWindow adds what a closed window of the group carries to t: instances started and
// stopped, and the RED series' requests, errors and latency observations. Totals summed from
// the windows of an exact pipeline equal the fleet's (the batch counts stay 0).
func (t *Totals) AddWindow(w *proto.Window) {
	t.InstancesStarted += uint64(w.InstancesStarted)
	t.InstancesStopped += uint64(w.InstancesStopped)
	for i := range w.Series {
		s := &w.Series[i]
		if len(s.Labels) == 0 {
			var n uint64
			if s.Hist != nil {
				n = s.Hist.Count
			}
			t.addRED(s.Name, s.Value, n)
		}
	}
}

// addBatch adds a published batch's RED series to t.
func (t *Totals) addBatch(b *proto.Batch) {
	t.BatchesSent++
	for i := range b.Series {
		s := &b.Series[i]
		if len(s.Labels) == 0 {
			t.addRED(s.Name, s.Value, s.Hist.Count)
		}
	}
}

// addRED adds one unlabelled series of a window or a batch: a RED counter's value, or the
// latency histogram's observation count.
func (t *Totals) addRED(name string, value float64, observations uint64) {
	switch name {
	case proto.SeriesRequests:
		t.Requests += uint64(value)
	case proto.SeriesErrors:
		t.Errors += uint64(value)
	case proto.SeriesLatency:
		t.LatencyCount += observations
	}
}
