package tokenstore

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/testlog"
)

// A probe that times out while etcd answers the store's calls means etcd is
// slow (a burst of sessions), not gone: it must not turn every console
// request into a 503. Once etcd has answered nothing for a probe's timeout,
// the same failure does.
func TestSlowProbeWhileCallsAreAnsweredKeepsEtcdHealthy(t *testing.T) {
	var logs testlog.Buffer
	h := newHealth(nil, time.Hour, time.Minute, slog.New(slog.NewJSONHandler(&logs, nil)))
	h.answered()
	h.report(1, context.DeadlineExceeded, false)
	if ok, _ := h.state(); !ok || h.current().Err() != nil {
		t.Fatalf("probe timed out right after an answered call: healthy %v, calls cut %v; want healthy and not cut", ok, h.current().Err())
	}

	h.timeout = time.Nanosecond // the last answer is now older than a probe's timeout
	h.report(2, context.DeadlineExceeded, false)
	if ok, _ := h.state(); ok || h.current().Err() == nil {
		t.Fatalf("probe timed out with no recent answer: healthy %v; want unhealthy and calls cut", ok)
	}
	if n := strings.Count(logs.String(), "etcd unavailable"); n != 1 {
		t.Errorf("got %d 'etcd unavailable' lines, want 1: %s", n, logs.String())
	}
}
