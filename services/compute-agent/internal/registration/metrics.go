package registration

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
)

// Metrics count the driver's instance events the agent handles:
//
//	vncgate_compute_agent_driver_events_total{kind}  started, stopped, migrated_away, console_changed, deleted, unknown
//
// Every kind is exported from the start, at zero. A nil *Metrics counts
// nothing.
type Metrics struct {
	events *prometheus.CounterVec
}

var eventKinds = []driver.EventKind{driver.Started, driver.Stopped, driver.MigratedAway, driver.ConsoleChanged, driver.Deleted}

// NewMetrics makes the metrics and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{events: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vncgate_compute_agent_driver_events_total",
		Help: "Instance events from the driver, by kind.",
	}, []string{"kind"})}
	for _, k := range eventKinds {
		m.events.WithLabelValues(k.String())
	}
	m.events.WithLabelValues("unknown")
	reg.MustRegister(m.events)
	return m
}

// event counts one event of kind k; a kind the driver made up counts as
// "unknown", so the label stays bounded.
func (m *Metrics) event(k driver.EventKind) {
	if m == nil {
		return
	}
	label := "unknown"
	for _, known := range eventKinds {
		if k == known {
			label = k.String()
		}
	}
	m.events.WithLabelValues(label).Inc()
}
