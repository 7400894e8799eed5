// Package testlog sends the output of servers a test starts (loggers,
// subprocesses) to the test's log, and stops at the end of the test: t.Log
// after that panics, and a server may still be logging while it stops.
package testlog

import (
	"context"
	"strings"
	"sync"
	"testing"
)

// Writer writes each Write, trailing newline removed, to t.Log.
type Writer struct {
	mu   sync.Mutex
	t    testing.TB
	done bool
}

// New returns a Writer for t. Call it before registering the cleanups that
// stop the servers writing to it, so that it goes quiet after they stopped.
func New(t testing.TB) *Writer {
	w := &Writer{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return w
}

func (w *Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(strings.TrimSuffix(string(p), "\n"))
	}
	return len(p), nil
}

// Buffer collects what loggers write from many goroutines, for a test to
// read back (String). The zero value is ready to use.
type Buffer struct {
	mu      sync.Mutex
	buf     strings.Builder
	written chan struct{} // closed and replaced on every Write
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.written != nil {
		close(b.written)
		b.written = nil
	}
	return b.buf.Write(p)
}

// WaitFor returns once substr has been written, or false when ctx ends
// first: a server logs after the client saw the effect, so a test waits for
// the line rather than reading the buffer once.
func (b *Buffer) WaitFor(ctx context.Context, substr string) bool {
	for {
		b.mu.Lock()
		if strings.Contains(b.buf.String(), substr) {
			b.mu.Unlock()
			return true
		}
		if b.written == nil {
			b.written = make(chan struct{})
		}
		written := b.written
		b.mu.Unlock()
		select {
		case <-written:
		case <-ctx.Done():
			return false
		}
	}
}

// String is everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
