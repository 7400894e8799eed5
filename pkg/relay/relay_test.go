package relay

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/loopback"
)

func TestRelayBothWaysWithHalfClose(t *testing.T) {
	for _, trackIdle := range []bool{false, true} {
		user, clientSide := loopback.Pair(t)
		serverSide, vnc := loopback.Pair(t)
		r := New(clientSide, serverSide, trackIdle)
		done := make(chan Result, 1)
		go func() { done <- r.Run() }()

		up := make([]byte, 1<<20)
		down := make([]byte, 3<<20)
		rand.Read(up)
		rand.Read(down)

		// The VNC end answers with down after reading all of up: this only
		// works if the relay half-closes instead of closing.
		vncErr := make(chan error, 1)
		go func() {
			got, err := io.ReadAll(vnc)
			if err == nil && !bytes.Equal(got, up) {
				err = io.ErrUnexpectedEOF
			}
			if err == nil {
				_, err = vnc.Write(down)
			}
			vnc.Close()
			vncErr <- err
		}()
		if _, err := user.Write(up); err != nil {
			t.Fatal(err)
		}
		user.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(user)
		if err != nil {
			t.Fatal(err)
		}
		if err := <-vncErr; err != nil {
			t.Fatalf("vnc side: %v", err)
		}
		if !bytes.Equal(got, down) {
			t.Fatalf("trackIdle=%v: got %d bytes back, want the %d sent", trackIdle, len(got), len(down))
		}
		res := <-done
		if res.ClientToServer != int64(len(up)) || res.ServerToClient != int64(len(down)) {
			t.Errorf("counts: got %d/%d, want %d/%d", res.ClientToServer, res.ServerToClient, len(up), len(down))
		}
		if res.FirstDone != Client {
			t.Errorf("first done: got %v, want client", res.FirstDone)
		}
		if res.ClientErr != nil || res.ServerErr != nil {
			t.Errorf("errors: got %v / %v, want none", res.ClientErr, res.ServerErr)
		}
	}
}

func TestCloseEndsRelay(t *testing.T) {
	_, clientSide := loopback.Pair(t)
	serverSide, _ := loopback.Pair(t)
	r := New(clientSide, serverSide, true)
	done := make(chan Result, 1)
	go func() { done <- r.Run() }()
	time.Sleep(20 * time.Millisecond)
	if r.IdleFor() < 10*time.Millisecond {
		t.Errorf("idle: got %v, want at least 10ms", r.IdleFor())
	}
	r.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("relay still running 5s after Close")
	}
}

// After the VNC server closes, a client that never closes its side must not
// hold the session: the relay gives it Linger, then closes both.
func TestHalfClosedSessionEndsAfterLinger(t *testing.T) {
	for _, first := range []Side{Server, Client} {
		t.Run(first.String()+" closes first", func(t *testing.T) {
			user, clientSide := loopback.Pair(t)
			serverSide, vnc := loopback.Pair(t)
			r := New(clientSide, serverSide, false)
			r.Linger = 100 * time.Millisecond
			done := make(chan Result, 1)
			go func() { done <- r.Run() }()

			closer, stays := vnc, user // the side that never closes
			if first == Client {
				closer, stays = user, vnc
			}
			io.WriteString(closer, "bye")
			closer.(*net.TCPConn).CloseWrite()
			stays.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(stays) // the goodbye, then the half-close
			if err != nil || string(got) != "bye" {
				t.Fatalf("the side left open: got %q (%v), want the goodbye and EOF", got, err)
			}
			select {
			case res := <-done:
				if res.FirstDone != first {
					t.Errorf("first done: got %v, want %v", res.FirstDone, first)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("relay still running 10s after one side closed, with the other side open")
			}
		})
	}
}

// A half-closed session lingers while bytes still move: the open direction
// finishes what it sends, however long past Linger that takes.
func TestHalfClosedSessionLingersWhileBytesMove(t *testing.T) {
	user, clientSide := loopback.Pair(t)
	serverSide, vnc := loopback.Pair(t)
	r := New(clientSide, serverSide, false)
	r.Linger = 200 * time.Millisecond
	done := make(chan Result, 1)
	go func() { done <- r.Run() }()

	user.(*net.TCPConn).CloseWrite() // the client is done sending
	const chunks = 30                // ~10 ms apart: 300 ms, past Linger
	go func() {
		for range chunks {
			vnc.Write([]byte("frame\n"))
			time.Sleep(10 * time.Millisecond)
		}
		vnc.Close()
	}()
	user.SetReadDeadline(time.Now().Add(30 * time.Second))
	got, err := io.ReadAll(user)
	if err != nil || len(got) != chunks*len("frame\n") {
		t.Fatalf("got %d bytes (%v), want all %d sent after the half-close", len(got), err, chunks*len("frame\n"))
	}
	if res := <-done; res.ServerToClient != int64(len(got)) {
		t.Errorf("server to client: got %d, want %d", res.ServerToClient, len(got))
	}
}

// counter records what a relay tells its Counter.
type counter struct{ from [3]atomic.Int64 }

func (c *counter) Count(from Side, n int) { c.from[from].Add(int64(n)) }

// TestBytesWhileRunning: Bytes and the Counter follow the bytes as they
// move, before the relay ends, and agree with the Result.
func TestBytesWhileRunning(t *testing.T) {
	user, clientSide := loopback.Pair(t)
	serverSide, vnc := loopback.Pair(t)
	r := New(clientSide, serverSide, false)
	c := &counter{}
	r.Counter = c
	done := make(chan Result, 1)
	go func() { done <- r.Run() }()

	user.SetDeadline(time.Now().Add(10 * time.Second)) // bounds a hang
	vnc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := user.Write(make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(vnc, make([]byte, 1000)); err != nil {
		t.Fatal(err)
	}
	if _, err := vnc.Write(make([]byte, 300)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(user, make([]byte, 300)); err != nil {
		t.Fatal(err)
	}
	// A write is counted once it returned, maybe just after the reader saw it.
	for {
		toServer, toClient := r.Bytes()
		if toServer == 1000 && toClient == 300 && c.from[Client].Load() == 1000 && c.from[Server].Load() == 300 {
			break
		}
		select {
		case <-done:
			t.Fatal("relay ended")
		case <-time.After(time.Millisecond):
		}
	}
	user.Close()
	vnc.Close()
	res := <-done
	if toServer, toClient := r.Bytes(); res.ClientToServer != toServer || res.ServerToClient != toClient {
		t.Errorf("Bytes after the end: got %d/%d, result %d/%d", toServer, toClient, res.ClientToServer, res.ServerToClient)
	}
}
