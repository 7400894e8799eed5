package gctune

import (
	"os"
	"runtime"
	"testing"
	"time"
)

// TestStart: with GOGC set, nothing is tuned; without it, the first
// collection of a small heap raises the GC percent above Go's default, up
// to maxPercent.
func TestStart(t *testing.T) {
	t.Setenv("GOGC", "150")
	if Start() {
		t.Fatal("Start tuned with GOGC set")
	}
	os.Unsetenv("GOGC") // t.Setenv restores it
	if !Start() {
		t.Fatal("Start did not tune without GOGC")
	}
	deadline := time.Now().Add(30 * time.Second)
	for Percent() <= minPercent {
		if time.Now().After(deadline) {
			t.Fatalf("GC percent after collections of a small heap: %d, want above %d", Percent(), minPercent)
		}
		runtime.GC() // the tuning runs after each collection
		time.Sleep(time.Millisecond)
	}
	if p := Percent(); p > maxPercent {
		t.Errorf("GC percent %d above %d", p, maxPercent)
	}
}
