package testlog

import (
	"fmt"
	"testing"
)

func TestQuietAfterTheTest(t *testing.T) {
	var w *Writer
	t.Run("inner", func(t *testing.T) {
		w = New(t)
		fmt.Fprintln(w, "logged while the test runs")
	})
	// t.Log on a finished test panics; the writer must not call it.
	if n, err := fmt.Fprintln(w, "after the end"); err != nil || n != len("after the end\n") {
		t.Fatalf("write after the end: got %d, %v; want it swallowed", n, err)
	}
}
