package registration

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
)

func TestMetricsCountEventsByKind(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 6 {
		t.Fatalf("before any event: got %d series (%v), want the 5 kinds and unknown at zero", n, err)
	}
	m.event(driver.Stopped)
	m.event(driver.Stopped)
	m.event(driver.EventKind(99)) // a kind the driver made up
	var none *Metrics
	none.event(driver.Started) // nil counts nothing, and does not panic
	for kind, want := range map[string]float64{"stopped": 2, "unknown": 1, "started": 0} {
		if got := testutil.ToFloat64(m.events.WithLabelValues(kind)); got != want {
			t.Errorf("driver_events_total{kind=%q}: got %v, want %v", kind, got, want)
		}
	}
}
