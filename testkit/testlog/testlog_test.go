package testlog

import (
	"context"
	"fmt"
	"testing"
	"time"
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

func TestBufferWaitFor(t *testing.T) {
	var b Buffer
	go func() {
		b.Write([]byte("first line\n"))
		b.Write([]byte("the line we wait for\n"))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if !b.WaitFor(ctx, "we wait for") {
		t.Fatal("WaitFor did not see a line that was written")
	}
	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	if b.WaitFor(ctx, "never written") {
		t.Fatal("WaitFor saw a line that was never written")
	}
}
