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
// off loopback unless admin_allow_remote (for kubelet probes and scrapers
// on a pod network) or allow_plaintext. pprof answers loopback peers only,
// wherever the listener is (kubectl port-forward arrives on loopback).
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

// AllowRemoteOption is [vncgate] admin_allow_remote: admin_listen may be
// off loopback without lifting allow_plaintext's guard on every other link.
const AllowRemoteOption = "admin_allow_remote"

// AllowRemoteHelp describes admin_allow_remote.
const AllowRemoteHelp = "let admin_listen be off loopback (plain HTTP: probes and metrics on a pod network; pprof still answers loopback only)"

// Help describes admin_listen for a service whose default is def.
func Help(def string) string {
	return "host:port of the plain HTTP admin listener (/livez, /readyz, /metrics, /debug/pprof/), e.g. " + def +
		"; off loopback only with admin_allow_remote or allow_plaintext; empty turns it off"
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
// loopback unless allowRemote (admin_allow_remote or allow_plaintext); for
// a service to check before it starts anything.
func CheckAddr(addr string, allowRemote bool) error {
	if addr == "" {
		return nil
	}
	if err := Validate(addr); err != nil {
		return err
	}
	if err := tlsconfig.CheckPlaintext(Option, addr, allowRemote); err != nil {
		return fmt.Errorf("%w (or set [vncgate] %s = true for the admin listener only)", err, AllowRemoteOption)
	}
	return nil
}

// Listen opens the admin listener on addr after CheckAddr. It returns nil, nil
// when addr is empty (off).
func Listen(addr string, allowRemote bool) (net.Listener, error) {
	if addr == "" {
		return nil, nil
	}
	if err := CheckAddr(addr, allowRemote); err != nil {
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
	mux.Handle("GET /debug/pprof/", loopbackOnly(pprof.Index))
	mux.Handle("GET /debug/pprof/cmdline", loopbackOnly(pprof.Cmdline))
	mux.Handle("GET /debug/pprof/profile", loopbackOnly(pprof.Profile))
	mux.Handle("GET /debug/pprof/symbol", loopbackOnly(pprof.Symbol))
	mux.Handle("POST /debug/pprof/symbol", loopbackOnly(pprof.Symbol))
	mux.Handle("GET /debug/pprof/trace", loopbackOnly(pprof.Trace))
	return mux
}

// loopbackOnly answers 403 to a peer off loopback: a profile shows a
// process's memory and costs its CPU, for an operator on the host only.
func loopbackOnly(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if ip := net.ParseIP(host); err != nil || ip == nil || !ip.IsLoopback() {
			writeJSON(w, http.StatusForbidden, map[string]any{"status": "forbidden", "error": "pprof answers loopback peers only"})
			return
		}
		h(w, r)
	})
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
