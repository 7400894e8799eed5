package authserver

import (
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// Where a token record was found (token_lookups_total's source).
const (
	sourceMemory = "memory"
	sourceEtcd   = "etcd"
)

// Metrics counts what the service does. Its counters work unregistered, so
// a nil Registerer costs nothing but the export.
type Metrics struct {
	minted  *prometheus.CounterVec
	checked *prometheus.CounterVec
	lookups *prometheus.CounterVec
	revoked prometheus.Counter
}

// NewMetrics creates the counters and registers them with reg when it is
// not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		minted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "vncgate", Subsystem: "consoleauth", Name: "tokens_minted_total",
			Help: "Console tokens minted, by console type.",
		}, []string{"console_type"}),
		checked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "vncgate", Subsystem: "consoleauth", Name: "token_checks_total",
			Help: "CheckToken calls, by gRPC result code.",
		}, []string{"code"}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "vncgate", Subsystem: "consoleauth", Name: "token_lookups_total",
			Help: "Token records found for CheckToken and token introspection, by where: memory (the watched copy) or etcd (a read).",
		}, []string{"source"}),
		revoked: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "vncgate", Subsystem: "consoleauth", Name: "tokens_revoked_total",
			Help: "Console tokens deleted by RevokeInstanceTokens.",
		}),
	}
	// The usual series at zero from the start, so rates and dashboards
	// work before the first call.
	for _, t := range []string{TypeNoVNC, TypeXVPVNC} {
		m.minted.WithLabelValues(t)
	}
	for _, c := range []codes.Code{codes.OK, codes.NotFound, codes.Unavailable} {
		m.checked.WithLabelValues(c.String())
	}
	for _, src := range []string{sourceMemory, sourceEtcd} {
		m.lookups.WithLabelValues(src)
	}
	if reg != nil {
		reg.MustRegister(m.minted, m.checked, m.lookups, m.revoked)
	}
	return m
}
