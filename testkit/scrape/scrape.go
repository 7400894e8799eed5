// Package scrape reads metric values out of a registry, for the
// tests of the proxies that export package proxymetrics: one sample by
// family name and labels, as a scrape would see it.
package scrape

import (
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Value gathers g and returns the sample of family name whose labels
// include labels (name, value, name, value, ...): a counter's or gauge's
// value, or a histogram's sample count. The test fails when g has no such
// sample.
func Value(t testing.TB, g prometheus.Gatherer, name string, labels ...string) float64 {
	t.Helper()
	if len(labels)%2 != 0 {
		t.Fatalf("labels %q: want name, value pairs", labels)
	}
	families, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	i := slices.IndexFunc(families, func(f *dto.MetricFamily) bool { return f.GetName() == name })
	if i < 0 {
		t.Fatalf("metric %s: not gathered", name)
	}
	for _, m := range families[i].GetMetric() {
		if !hasLabels(m, labels) {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
		t.Fatalf("metric %s%q: not a counter, gauge or histogram", name, labels)
	}
	t.Fatalf("metric %s: no sample with labels %q", name, labels)
	return 0
}

func hasLabels(m *dto.Metric, labels []string) bool {
	for i := 0; i < len(labels); i += 2 {
		if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
			return l.GetName() == labels[i] && l.GetValue() == labels[i+1]
		}) {
			return false
		}
	}
	return true
}
