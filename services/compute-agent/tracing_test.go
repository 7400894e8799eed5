package main

import (
	"strings"
	"testing"
)

// TestOTLPEndpointFromTheEnvironment: with otlp_endpoint empty the standard
// variable is honoured, and checked the same way.
func TestOTLPEndpointFromTheEnvironment(t *testing.T) {
	t.Setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
	if _, _, err := loadConfig(nil); err != nil {
		t.Fatalf("a collector URL in the environment: %v", err)
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4317")
	_, _, err := loadConfig(nil)
	if err == nil || !strings.Contains(err.Error(), "OTEL_EXPORTER_OTLP_ENDPOINT") {
		t.Errorf("host:port in the environment: got %v, want an error naming the variable", err)
	}
}
