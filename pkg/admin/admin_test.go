package admin

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServe(t *testing.T) {
	reg := prometheus.NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "vncgate_test_total", Help: "a test counter"})
	reg.MustRegister(c)
	c.Inc()
	var etcdDown atomic.Bool
	l, err := Listen("127.0.0.1:0", false)
	if err != nil {
		t.Fatal(err)
	}
	s := Serve(l, Options{Metrics: reg, Ready: []Check{
		{Name: "always", Check: func() error { return nil }},
		{Name: "etcd", Check: func() error {
			if etcdDown.Load() {
				return errors.New("etcd unreachable")
			}
			return nil
		}},
	}})
	defer s.Stop()
	base := "http://" + s.Addr().String()

	if code, body := get(t, base+"/livez"); code != 200 || !strings.Contains(body, `"alive"`) {
		t.Errorf("/livez: %d %s", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != 200 || !strings.Contains(body, `"ready"`) {
		t.Errorf("/readyz: %d %s", code, body)
	}
	etcdDown.Store(true)
	code, body := get(t, base+"/readyz")
	var r struct{ Status, Failing, Error string }
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("/readyz body %q: %v", body, err)
	}
	if code != 503 || r.Status != "not ready" || r.Failing != "etcd" || r.Error != "etcd unreachable" {
		t.Errorf("/readyz with etcd down: %d %s", code, body)
	}
	if _, body := get(t, base+"/metrics"); !strings.Contains(body, "vncgate_ready 0") || !strings.Contains(body, `vncgate_ready_check{check="etcd"} 0`) ||
		!strings.Contains(body, `vncgate_ready_check{check="always"} 1`) {
		t.Errorf("/metrics with etcd down: want vncgate_ready 0 and the etcd check at 0, got %s", body)
	}
	etcdDown.Store(false)
	if code, _ := get(t, base+"/readyz"); code != 200 {
		t.Errorf("/readyz after etcd came back: %d", code)
	}
	if code, body := get(t, base+"/metrics"); code != 200 || !strings.Contains(body, "vncgate_test_total 1") {
		t.Errorf("/metrics: %d %s", code, body)
	}
	if _, body := get(t, base+"/metrics"); !strings.Contains(body, "vncgate_ready 1") {
		t.Errorf("/metrics when ready: no vncgate_ready 1 in %s", body)
	}
	if _, body := get(t, base+"/metrics"); !strings.Contains(body, BuildInfoName+`{goversion="go`) || !strings.Contains(body, `revision="`) {
		t.Errorf("/metrics: no %s with its labels in %s", BuildInfoName, body)
	}
	if code, body := get(t, base+"/debug/pprof/"); code != 200 || !strings.Contains(body, "goroutine") {
		t.Errorf("/debug/pprof/: %d", code)
	}
	if code, body := get(t, base+"/debug/pprof/goroutine?debug=1"); code != 200 || !strings.Contains(body, "goroutine profile") {
		t.Errorf("/debug/pprof/goroutine: %d", code)
	}
}

func TestListenRefusesPlaintextOffLoopback(t *testing.T) {
	if _, err := Listen("0.0.0.0:0", false); err == nil || !strings.Contains(err.Error(), "admin_listen") ||
		!strings.Contains(err.Error(), AllowRemoteOption) {
		t.Fatalf("admin_listen 0.0.0.0 without admin_allow_remote: %v, want a refusal naming admin_listen and %s", err, AllowRemoteOption)
	}
	l, err := Listen("0.0.0.0:0", true)
	if err != nil {
		t.Fatalf("with allow_plaintext: %v", err)
	}
	l.Close()
	if l, err := Listen("", false); l != nil || err != nil {
		t.Fatalf("empty: %v %v, want off", l, err)
	}
	for _, bad := range []string{"6190", "localhost", "[::1"} {
		if err := Validate(bad); err == nil {
			t.Errorf("Validate(%q) = nil, want an error", bad)
		}
	}
	Serve(nil, Options{}).Stop() // off: nothing to stop
}

// TestPprofAnswersLoopbackOnly: with the listener off loopback
// (admin_allow_remote), probes and metrics answer anyone on the network but
// a profile only a peer on the host.
func TestPprofAnswersLoopbackOnly(t *testing.T) {
	h := Handler(Options{})
	for _, tc := range []struct {
		peer string
		path string
		want int
	}{
		{"10.1.2.3:40000", "/debug/pprof/", http.StatusForbidden},
		{"[2001:db8::1]:40000", "/debug/pprof/cmdline", http.StatusForbidden},
		{"127.0.0.1:40000", "/debug/pprof/", http.StatusOK},
		{"[::1]:40000", "/debug/pprof/cmdline", http.StatusOK},
		{"10.1.2.3:40000", "/livez", http.StatusOK},
	} {
		r := httptest.NewRequest(http.MethodGet, tc.path, nil)
		r.RemoteAddr = tc.peer
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		if w.Code != tc.want {
			t.Errorf("%s from %s: %d, want %d", tc.path, tc.peer, w.Code, tc.want)
		}
	}
}
