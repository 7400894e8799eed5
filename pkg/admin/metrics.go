package admin

import (
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// BuildInfoName is the gauge every service's /metrics carries: 1, labelled
// with the build's version, VCS revision and Go version, for dashboards to
// show what runs where.
const BuildInfoName = "vncgate_build_info"

// buildInfo is a registry holding only the build_info gauge, gathered
// beside each service's own registry.
var buildInfo = newBuildInfo()

func newBuildInfo() *prometheus.Registry {
	version, revision := "unknown", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v := bi.Main.Version; v != "" {
			version = v // "(devel)" for a build from a work tree
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && s.Value != "" {
				revision = s.Value
			}
		}
	}
	reg := prometheus.NewRegistry()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        BuildInfoName,
		Help:        "1, labelled with the build's version, VCS revision and Go version.",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": runtime.Version()},
	})
	g.Set(1)
	reg.MustRegister(g)
	return reg
}

// Readiness gauges every service's /metrics carries beside its registry,
// from the same checks as /readyz, evaluated at each scrape.
const (
	ReadyName      = "vncgate_ready"
	ReadyCheckName = "vncgate_ready_check"
)

var (
	readyDesc = prometheus.NewDesc(ReadyName,
		"1 when every readiness check passes (/readyz answers 200), else 0.", nil, nil)
	readyCheckDesc = prometheus.NewDesc(ReadyCheckName,
		"1 while a readiness check passes, by check (draining, etcd, consoleauth, revocation_watch, registration, driver, ...).",
		[]string{"check"}, nil)
)

// readiness exports checks as gauges.
type readiness []Check

func (r readiness) Describe(ch chan<- *prometheus.Desc) {
	ch <- readyDesc
	ch <- readyCheckDesc
}

func (r readiness) Collect(ch chan<- prometheus.Metric) {
	all := 1.0
	for _, c := range r {
		v := 1.0
		if c.Check() != nil {
			v, all = 0, 0
		}
		ch <- prometheus.MustNewConstMetric(readyCheckDesc, prometheus.GaugeValue, v, c.Name)
	}
	ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, all)
}

// gatherer is what /metrics serves: the service's registry, build_info and
// the readiness gauges.
func gatherer(service prometheus.Gatherer, checks []Check) prometheus.Gatherer {
	reg := prometheus.NewRegistry()
	reg.MustRegister(readiness(checks))
	return prometheus.Gatherers{service, buildInfo, reg}
}
