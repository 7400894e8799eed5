package main

import (
	"strings"
	"testing"
)

// TestOTLPEndpointOption: otlp_endpoint takes a collector URL; anything else
// stops consoleauth at start with the option named.
func TestOTLPEndpointOption(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	cfg, _, err := loadConfig([]string{"--otlp_endpoint=http://127.0.0.1:4317"})
	if err != nil || cfg.Tracing.Endpoint != "http://127.0.0.1:4317" {
		t.Fatalf("got %q, %v; want the URL taken", cfg.Tracing.Endpoint, err)
	}
	_, _, err = loadConfig([]string{"--otlp_endpoint=collector:4317"})
	if err == nil || !strings.Contains(err.Error(), `otlp_endpoint "collector:4317": want an OTLP/gRPC collector URL`) {
		t.Errorf("host:port without a scheme: got %v, want an error naming otlp_endpoint", err)
	}
}
