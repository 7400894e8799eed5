package qmp

import (
	"bufio"
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fakeMonitor serves one QMP session on a unix socket: a greeting of
// greetingPad extra bytes, the capabilities reply, then to every command a
// reply whose return value is a string of replyLen bytes. It counts what it
// managed to write.
type fakeMonitor struct {
	path                  string
	greetingPad, replyLen int
	written               atomic.Int64
	done                  chan struct{}
}

func startFakeMonitor(t *testing.T, greetingPad, replyLen int) *fakeMonitor {
	t.Helper()
	m := &fakeMonitor{path: filepath.Join(t.TempDir(), "qmp.sock"), greetingPad: greetingPad, replyLen: replyLen, done: make(chan struct{})}
	l, err := net.Listen("unix", m.path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); <-m.done })
	go func() {
		defer close(m.done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		w := &countingWriter{c: c, n: &m.written}
		if _, err := w.Write([]byte(`{"QMP": {"version": {}, "capabilities": [], "pad": "` + strings.Repeat("p", greetingPad) + `"}}` + "\r\n")); err != nil {
			return
		}
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			id := line[strings.Index(line, `"id":`)+5 : strings.LastIndex(line, "}")]
			if strings.Contains(line, "qmp_capabilities") {
				if _, err := w.Write([]byte(`{"return": {}, "id": ` + id + "}\r\n")); err != nil {
					return
				}
				continue
			}
			// The reply is written in pieces, as a stream.
			if _, err := w.Write([]byte(`{"return": "`)); err != nil {
				return
			}
			chunk := []byte(strings.Repeat("r", 64<<10))
			for left := m.replyLen; left > 0; left -= len(chunk) {
				if _, err := w.Write(chunk[:min(left, len(chunk))]); err != nil {
					return
				}
			}
			if _, err := w.Write([]byte(`", "id": ` + id + "}\r\n")); err != nil {
				return
			}
		}
	}()
	return m
}

type countingWriter struct {
	c net.Conn
	n *atomic.Int64
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.c.SetWriteDeadline(time.Now().Add(5 * time.Second)) // bounds a hang only
	n, err := w.c.Write(p)
	w.n.Add(int64(n))
	return n, err
}

func TestRepliesAreSizeCapped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("a reply under the cap", func(t *testing.T) {
		m := startFakeMonitor(t, 0, MaxMessageSize-1024)
		c, err := dial(ctx, m.path, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.close()
		var out string
		if err := c.execute(ctx, "query-vnc", &out); err != nil || len(out) != MaxMessageSize-1024 {
			t.Fatalf("got %d bytes, %v, want the reply", len(out), err)
		}
	})

	t.Run("a 64 MiB reply", func(t *testing.T) {
		m := startFakeMonitor(t, 0, 64<<20)
		c, err := dial(ctx, m.path, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.close()
		var out string
		err = c.execute(ctx, "query-vnc", &out)
		if !errors.Is(err, ErrMessageTooLarge) {
			t.Fatalf("got %d bytes, %v, want ErrMessageTooLarge", len(out), err)
		}
		<-m.done // the session was closed: the monitor's writes failed
		// What the monitor got written is the cap plus the kernel's socket
		// buffers, nowhere near the reply.
		if n := m.written.Load(); n > 16<<20 {
			t.Errorf("the agent took %d bytes of a 64 MiB reply, want it to stop near %d", n, MaxMessageSize)
		}
		if c.alive() {
			t.Error("session still alive after an oversized reply")
		}
	})

	t.Run("an oversized greeting", func(t *testing.T) {
		m := startFakeMonitor(t, 4<<20, 0)
		if _, err := dial(ctx, m.path, 5*time.Second); !errors.Is(err, ErrMessageTooLarge) {
			t.Fatalf("got %v, want ErrMessageTooLarge", err)
		}
	})
}
