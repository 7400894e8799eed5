// Package admin serves a service's admin endpoints on a listener of their
// own, apart from the public and API ports, so that probes and scrapers need
// no client certificate and pprof is never reachable from users:
//
//	GET /livez          200 {"status": "alive"} while the service runs
//	GET /readyz         200 {"status": "ready"} when every check passes;
//	                    503 {"status": "not ready", "failing": "...", "error": "..."}
//	                    naming the first check that fails
//	GET /metrics        the service's Prometheus registry, plus vncgate_build_info
//	                    and the /readyz checks as vncgate_ready{,_check}
//	GET /debug/pprof/   net/http/pprof, on this mux only
//
// The listener is plain HTTP: it carries no token nor credential, but
// pprof and the metrics are for operators, so Listen refuses an address
// off loopback unless allow_plaintext (tlsconfig.CheckPlaintext).
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

// Option is the name of the setting, [vncgate] admin_listen.
const Option = "admin_listen"

// Help describes admin_listen for a service whose default is def.
func Help(def string) string {
	return "host:port of the plain HTTP admin listener (/livez, /readyz, /metrics, /debug/pprof/), e.g. " + def +
		"; off loopback only with allow_plaintext; empty turns it off"
}

// Check is one condition of readiness. Check returns nil while it holds,
// or why not (a short sentence, no secret).
type Check struct {
	Name  string
	Check func() error
}

// Options are what Serve serves.
type Options struct {
	// Metrics is the service's registry; nil serves no /metrics.
	Metrics prometheus.Gatherer
	// Ready are the conditions of /readyz, checked in order.
	Ready []Check
	// Routes are more handlers, by mux pattern (xvp-proxy's /healthz).
	Routes map[string]http.Handler
	Log    *slog.Logger
}

// Validate checks an admin_listen value: empty (off) or host:port.
func Validate(addr string) error {
	if addr == "" {
		return nil
	}
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return fmt.Errorf("%s %.80q: want host:port (empty turns it off)", Option, addr)
	}
	return nil
}

// CheckAddr refuses an admin_listen value that is not host:port, or off
// loopback without allowPlaintext; for a service to check before it starts
// anything.
func CheckAddr(addr string, allowPlaintext bool) error {
	if addr == "" {
		return nil
	}
	if err := Validate(addr); err != nil {
		return err
	}
	return tlsconfig.CheckPlaintext(Option, addr, allowPlaintext)
}

// Listen opens the admin listener on addr after CheckAddr. It returns nil, nil
// when addr is empty (off).
func Listen(addr string, allowPlaintext bool) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	if err := CheckAddr(addr, allowPlaintext); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", Option, err)
	}
	return l, nil
}

// Handler is the admin mux.
func Handler(opts Options) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /livez", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "alive"})
	})
	ready := opts.Ready
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		for _, c := range ready {
			if err := c.Check(); err != nil {
				writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "not ready", "failing": c.Name, "error": err.Error()})
				return
			}
		}
		writeJSON(w, http.StatusOK, map[string]any{"status": "ready"})
	})
	if opts.Metrics != nil {
		mux.Handle("GET /metrics", promhttp.HandlerFor(gatherer(opts.Metrics, ready), promhttp.HandlerOpts{}))
	}
	for pattern, h := range opts.Routes {
		mux.Handle(pattern, h)
	}
	// net/http/pprof also registers on http.DefaultServeMux in its init:
	// no public server may use that mux (each has its own).
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

func writeJSON(w http.ResponseWriter, code int, body map[string]any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(body)
}

// Server is a running admin listener.
type Server struct {
	hs     *http.Server
	l      net.Listener
	served chan error
	log    *slog.Logger
}

// Serve serves the admin endpoints on l until Stop. l nil (admin_listen
// empty) gives a Server whose Stop does nothing.
func Serve(l net.Listener, opts Options) *Server {
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	s := &Server{l: l, log: opts.Log}
	if l == nil {
		return s
	}
	s.hs = &http.Server{
		Handler:           Handler(opts),
		ReadHeaderTimeout: 10 * time.Second,
		// pprof's profile and trace run up to their ?seconds= (30 by
		// default): the write deadline leaves room for them.
		WriteTimeout:   2 * time.Minute,
		IdleTimeout:    2 * time.Minute,
		MaxHeaderBytes: 16 << 10,
		ErrorLog:       slog.NewLogLogger(opts.Log.Handler(), slog.LevelDebug),
	}
	s.served = make(chan error, 1)
	go func() { s.served <- s.hs.Serve(l) }()
	opts.Log.Info("admin listening", "addr", l.Addr().String())
	return s
}

// Addr is the listener's address, nil when off.
func (s *Server) Addr() net.Addr {
	if s == nil || s.l == nil {
		return nil
	}
	return s.l.Addr()
}

// Stop closes the listener, lets requests in flight finish for a few
// seconds, then cuts them.
func (s *Server) Stop() {
	if s == nil || s.hs == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.hs.Shutdown(ctx); err != nil {
		_ = s.hs.Close()
	}
	if err := <-s.served; !errors.Is(err, http.ErrServerClosed) {
		s.log.Warn("admin listener failed", "error", err)
	}
}

// ProxyReadiness is a proxy's /readyz: not draining, a consoleauth replica
// reachable, and the revocation watch up when there is one (watching nil:
// revocation watching is off).
func ProxyReadiness(draining, consoleAuthReady, watching func() bool) []Check {
	checks := []Check{
		{Name: "draining", Check: func() error {
			if draining() {
				return errors.New("shutting down")
			}
			return nil
		}},
		{Name: "consoleauth", Check: func() error {
			if !consoleAuthReady() {
				return errors.New("no consoleauth replica reachable")
			}
			return nil
		}},
	}
	if watching != nil {
		checks = append(checks, Check{Name: "revocation_watch", Check: func() error {
			if !watching() {
				return errors.New("the revocation watch on etcd is down")
			}
			return nil
		}})
	}
	return checks
}
