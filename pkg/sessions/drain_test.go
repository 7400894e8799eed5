package sessions

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/vncgate/vncgate/pkg/proxymetrics"
)

// health is the status and "status" field of a health answer.
func health(t *testing.T, c *Core) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	c.WriteHealth(rec)
	var body struct{ Status string }
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil {
		t.Fatalf("health body %q: %v", rec.Body, err)
	}
	return rec.Code, body.Status
}

// A shutdown's phases: Unready turns readiness red but still admits (the
// load balancer has not noticed yet); Drain refuses new sessions while live
// ones go on; EndAll ends them as a shutdown.
func TestShutdownPhases(t *testing.T) {
	w := newCoreWorld(t, nil)
	early, r := w.admit(w.token("early", "i"))
	if r != nil {
		t.Fatal(r)
	}
	live := run(t, early)
	live.echo(t, "before")

	w.core.Unready()
	if code, status := health(t, w.core); code != http.StatusServiceUnavailable || status != "draining" {
		t.Errorf("unready: health %d %q, want 503 draining", code, status)
	}
	if !w.core.Draining() {
		t.Error("unready: Draining() = false, want true")
	}
	late, r := w.admit(w.token("late", "i"))
	if r != nil {
		t.Fatalf("unready: new session refused (%v), want it served", r)
	}
	lateRun := run(t, late)
	lateRun.echo(t, "admitted while unready")

	w.core.Drain()
	if _, r := w.admit(w.token("refused", "i")); r == nil || r.Why != proxymetrics.RefusedShutdown {
		t.Fatalf("draining: got refusal %v, want %s", r, proxymetrics.RefusedShutdown)
	}
	live.echo(t, "live session goes on while draining")
	lateRun.echo(t, "so does the late one")

	w.core.EndAll()
	for _, rn := range []*running{live, lateRun} {
		if why := rn.ended(t); why != proxymetrics.EndShutdown {
			t.Errorf("ended with %v, want %v", why, proxymetrics.EndShutdown)
		}
	}
}
