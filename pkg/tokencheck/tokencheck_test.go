package tokencheck_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"

	"github.com/vncgate/vncgate/pkg/grpcclient"
	"github.com/vncgate/vncgate/pkg/tokencheck"
	"github.com/vncgate/vncgate/testkit/fakeconsoleauth"
)

// deadAddr is a loopback address where nothing listens.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func dial(t *testing.T, addresses string) *grpc.ClientConn {
	t.Helper()
	conn, err := tokencheck.Dial(addresses, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// waitState waits for conn to reach want (the bound stops a hang).
func waitState(t *testing.T, conn *grpc.ClientConn, want connectivity.State) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for s := conn.GetState(); s != want; s = conn.GetState() {
		if !conn.WaitForStateChange(ctx, s) {
			t.Fatalf("connection state: still %v, want %v", s, want)
		}
	}
}

// TestCheckSortsAnswers: each of consoleauth's answers is one reason.
func TestCheckSortsAnswers(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	auth.Add("good", "novnc", "inst", "127.0.0.1:5900", "")
	auth.Add("moved", "novnc", "inst", "127.0.0.1:5900", "")
	auth.Fail("moved", codes.FailedPrecondition)
	c := tokencheck.New(dial(t, auth.Addr), time.Second)
	ctx := context.Background()

	info, err := c.Check(ctx, "good", "novnc")
	if err != nil || info.GetHost() != "127.0.0.1" || info.GetPort() != 5900 {
		t.Fatalf("good token: got %v, %v; want 127.0.0.1:5900", info, err)
	}
	for _, tc := range []struct {
		name, token, consoleType string
		want                     error
	}{
		{"no token", "", "novnc", tokencheck.ErrInvalid},
		{"unknown token", "nope", "novnc", tokencheck.ErrInvalid},
		{"another console type", "good", "xvpvnc", tokencheck.ErrWrongType},
		{"moved", "moved", "novnc", tokencheck.ErrMoved},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.Check(ctx, tc.token, tc.consoleType); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
	auth.SetUnavailable(true)
	if _, err := c.Check(ctx, "good", "novnc"); !errors.Is(err, tokencheck.ErrUnavailable) {
		t.Errorf("consoleauth unavailable: got %v, want ErrUnavailable", err)
	}
}

// TestDialAList: a comma-separated consoleauth_address whose first entry
// is dead checks tokens through the second (this list used to fail every
// check with "too many colons").
func TestDialAList(t *testing.T) {
	auth := fakeconsoleauth.Start(t)
	auth.Add("good", "novnc", "inst", "127.0.0.1:5900", "")
	_, port, _ := net.SplitHostPort(auth.Addr)
	c := tokencheck.New(dial(t, deadAddr(t)+", localhost:"+port), 5*time.Second)
	for i := range 20 {
		if _, err := c.Check(context.Background(), "good", "novnc"); err != nil {
			t.Fatalf("check %d: %v", i, err)
		}
	}
}

func TestDialRefusesABadList(t *testing.T) {
	_, err := tokencheck.Dial("127.0.0.1:6090,,127.0.0.2:6090", nil)
	if err == nil || !strings.Contains(err.Error(), "consoleauth_address: entry 2 of 3 is empty") {
		t.Errorf("got %v, want an error naming the empty entry", err)
	}
}

// TestWriteUnreachable: readiness is red (503 consoleauth unreachable)
// while no replica answers, and left to the proxy once one does.
func TestWriteUnreachable(t *testing.T) {
	health := func(conn *grpc.ClientConn) (bool, int, map[string]any) {
		rec := httptest.NewRecorder()
		wrote := tokencheck.WriteUnreachable(rec, conn, 3)
		var body map[string]any
		if wrote {
			if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
				t.Fatalf("body %q: %v", rec.Body, err)
			}
		}
		return wrote, rec.Code, body
	}

	down := dial(t, deadAddr(t)+","+deadAddr(t))
	waitState(t, down, connectivity.TransientFailure)
	wrote, code, body := health(down)
	if !wrote || code != http.StatusServiceUnavailable || body["status"] != "consoleauth unreachable" || body["sessions"] != 3.0 {
		t.Errorf("no replica up: got wrote=%v %d %v, want 503 consoleauth unreachable with 3 sessions", wrote, code, body)
	}

	auth := fakeconsoleauth.Start(t)
	up := dial(t, deadAddr(t)+","+auth.Addr)
	waitState(t, up, connectivity.Ready)
	if wrote, _, _ := health(up); wrote || !grpcclient.Ready(up) {
		t.Errorf("one replica up: WriteUnreachable wrote an answer, want none")
	}
}
