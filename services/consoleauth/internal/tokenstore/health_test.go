package tokenstore_test

import (
	"bufio"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/services/consoleauth/internal/testworld"
	"github.com/vncgate/vncgate/services/consoleauth/internal/tokenstore"
	"github.com/vncgate/vncgate/testkit/etcd"
	"github.com/vncgate/vncgate/testkit/testlog"
)

// TestOutageCutsCallsAndIsLoggedOnce cuts the store off from etcd: a call in
// flight then ends as soon as the probe finds etcd gone, long before the
// store's timeout; while etcd stays away calls fail before reaching it; the
// store serves again once the probe gets an answer; the outage is logged
// once and its end once.
func TestOutageCutsCallsAndIsLoggedOnce(t *testing.T) {
	t.Parallel()
	etcdSrv, _ := etcd.Start(t)
	link := etcdSrv.NewLink(t)
	ctx := testworld.Ctx(t)
	var logs testlog.Buffer
	s := newStore(t, newClient(t, link.Addr), tokenstore.Options{Timeout: tokenstore.DefaultTimeout,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil))})
	m, err := s.Mint(ctx, record("i-1"))
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	healthy, changed := s.Health()
	if !healthy {
		t.Fatal("store unhealthy with etcd up")
	}
	watched := make(chan bool, 10)
	go s.WatchHealth(ctx, func(healthy bool) { watched <- healthy })
	if !<-watched {
		t.Error("WatchHealth: first call unhealthy, want healthy")
	}

	// m is answered from memory while etcd is healthy (tokencache.go);
	// while it is not, memory is not used either.
	for {
		e, err := s.Lookup(ctx, m.Token)
		if err != nil {
			t.Fatalf("lookup: %v", err)
		}
		if e.FromMemory {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the minted token never reached the store's memory")
		case <-time.After(5 * time.Millisecond):
		}
	}

	link.Cut()
	inFlight := s.Healthy() // the probe takes up to its timeout to notice
	start := time.Now()
	// A token not in memory: the lookup goes to etcd and is cut there.
	_, err = s.Lookup(ctx, strings.Repeat("Q", tokenstore.TokenLen))
	took := time.Since(start)
	if !errors.Is(err, tokenstore.ErrStoreUnavailable) || !strings.Contains(err.Error(), "etcd failed its health probe") {
		t.Fatalf("lookup as etcd went: got %v, want ErrStoreUnavailable from the probe", err)
	}
	if took >= tokenstore.DefaultTimeout {
		t.Errorf("lookup as etcd went answered after %v: at the store's timeout, not cut by the probe", took)
	}
	t.Logf("lookup started while the store still took etcd for healthy: %v; answered after %v", inFlight, took)

	select {
	case <-changed:
	case <-ctx.Done():
		t.Fatal("no change of health after etcd went")
	}
	healthy, changed = s.Health()
	if healthy {
		t.Fatal("store healthy with etcd cut off")
	}
	calls := map[string]func() error{
		"mint":   func() error { _, err := s.Mint(ctx, record("i-1")); return err },
		"lookup": func() error { _, err := s.Lookup(ctx, m.Token); return err },
		"revoke": func() error { _, err := s.Revoke(ctx, "i-1", "stopped"); return err },
		"locate": func() error { _, err := s.Locate(ctx, uuidRunning); return err },
		"ping":   func() error { return s.Ping(ctx) },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, tokenstore.ErrStoreUnavailable) || !strings.Contains(err.Error(), "etcd failed its health probe") {
			t.Errorf("%s while etcd is away: got %v, want ErrStoreUnavailable from the probe", name, err)
		}
	}

	link.Restore()
	select {
	case <-changed:
	case <-ctx.Done():
		t.Fatal("no change of health after etcd came back")
	}
	if !s.Healthy() {
		t.Fatal("store unhealthy after etcd came back")
	}
	if _, err := s.Lookup(ctx, m.Token); err != nil {
		t.Errorf("lookup after etcd came back: %v", err)
	}
	// WatchHealth followed both changes, in order.
	if got := []bool{<-watched, <-watched}; got[0] || !got[1] {
		t.Errorf("WatchHealth after the outage: got %v, want [false true]", got)
	}

	var warns, backs int
	sc := bufio.NewScanner(strings.NewReader(logs.String()))
	for sc.Scan() {
		var rec struct{ Level, Msg string }
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		switch {
		case rec.Level == "WARN" && strings.HasPrefix(rec.Msg, "etcd unavailable"):
			warns++
		case rec.Level == "INFO" && strings.HasPrefix(rec.Msg, "etcd available again"):
			backs++
		case rec.Level != "INFO" && rec.Level != "DEBUG":
			t.Errorf("unexpected log line: %s", sc.Text())
		}
	}
	if warns != 1 || backs != 1 {
		t.Errorf("logged %d outages and %d recoveries, want 1 and 1:\n%s", warns, backs, logs.String())
	}
}

func TestProbeSettingsMustBePositive(t *testing.T) {
	t.Parallel()
	cli := newClient(t, "127.0.0.1:1") // never reached
	for _, opts := range []tokenstore.Options{{ProbeInterval: -time.Second}, {ProbeTimeout: -time.Second}} {
		if _, err := tokenstore.New(cli, opts); err == nil || !strings.Contains(err.Error(), "want positive durations") {
			t.Errorf("%+v: got %v, want an error", opts, err)
		}
	}
}
