package livesessions

import (
	"fmt"
	"log/slog"
	"net"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/pkg/audit"
	"github.com/vncgate/vncgate/pkg/config"
	"github.com/vncgate/vncgate/pkg/etcdclient"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/sessions"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

// Proxy is what a console proxy's run opens of its day-2 side, the same way
// in both proxies: its name, its one etcd client (revocations, live
// sessions, kills, drains; nil without etcd_endpoints), its audit outputs
// and its publisher (nil without etcd).
type Proxy struct {
	Name  string
	Etcd  *clientv3.Client
	Audit *audit.Logger
	Live  *Publisher

	stopReopen func()
}

// Open opens a proxy's day-2 side: service names it in syslog, consoleType
// and port derive its default name. Close it when the proxy stops.
func (o Settings) Open(service, consoleType string, port int, endpoints []string, etcdFiles tlsconfig.Files, log *slog.Logger) (*Proxy, error) {
	p := &Proxy{Name: o.Name(consoleType, port), stopReopen: func() {}}
	var err error
	if len(endpoints) > 0 {
		if p.Etcd, err = etcdclient.New(endpoints, etcdFiles); err != nil {
			return nil, err
		}
	}
	if p.Audit, err = audit.Open(audit.Options{File: o.AuditFile, Syslog: o.AuditSyslog, Tag: service, Log: log}); err != nil {
		p.Close()
		return nil, err
	}
	p.stopReopen = p.Audit.ReopenOnSIGHUP()
	if p.Etcd != nil {
		p.Live, err = Start(Options{Client: p.Etcd, Proxy: registry.Proxy{Name: p.Name, ConsoleType: consoleType, Started: time.Now()},
			TTL: o.TTL, Refresh: o.Refresh, Log: log})
		if err != nil {
			p.Close()
			return nil, err
		}
	}
	return p, nil
}

// Close revokes the publisher's lease (the records vanish now), then
// closes the audit outputs and the etcd client.
func (p *Proxy) Close() {
	p.Live.Close()
	p.stopReopen()
	p.Audit.Close()
	if p.Etcd != nil {
		p.Etcd.Close()
	}
}

// Settings are a console proxy's day-2 options, the same in both proxies
// ([vncgate]): its name, its live records' lease, and its audit outputs.
type Settings struct {
	ProxyName   string        // proxy_name; "" derives DefaultName
	TTL         time.Duration // live_sessions_ttl
	Refresh     time.Duration // live_sessions_refresh
	AuditFile   string        // audit_file
	AuditSyslog string        // audit_syslog
}

// Declare adds the options to s.
func (o *Settings) Declare(s *config.Set) {
	s.String(&o.ProxyName, config.SectionVNCGate, "proxy_name", "",
		"this proxy's name in etcd (live sessions, vncgatectl proxy drain) and audit events; under etcd authentication its etcd user, the CN of etcd_cert; empty: HOST-TYPE-PORT")
	s.Seconds(&o.TTL, config.SectionVNCGate, "live_sessions_ttl", DefaultTTL,
		"TTL of the etcd lease holding this proxy's records: how long they outlive a proxy that died")
	s.Seconds(&o.Refresh, config.SectionVNCGate, "live_sessions_refresh", DefaultRefresh,
		"how often a live session's byte counts are written to etcd (only when they changed)")
	s.String(&o.AuditFile, config.SectionVNCGate, "audit_file", "",
		"file receiving one JSON line per audit event (session end, refusal); reopened on SIGHUP (logrotate)")
	s.String(&o.AuditSyslog, config.SectionVNCGate, "audit_syslog", "",
		"syslog receiving audit events: local, host:port (UDP), udp://host:port or tcp://host:port; empty: none")
}

// Check says what is wrong with the options.
func (o Settings) Check() error {
	if o.ProxyName != "" {
		if err := registry.CheckProxyName(o.ProxyName); err != nil {
			return fmt.Errorf("proxy_name: %w", err)
		}
	}
	if o.TTL < 2*time.Second || o.TTL > time.Hour {
		return fmt.Errorf("live_sessions_ttl %s: want 2-3600 seconds", o.TTL)
	}
	if o.Refresh < time.Second || o.Refresh > time.Hour {
		return fmt.Errorf("live_sessions_refresh %s: want 1-3600 seconds", o.Refresh)
	}
	if o.AuditSyslog != "" {
		return audit.CheckSyslog(o.AuditSyslog)
	}
	return nil
}

// Name is the proxy's name: proxy_name, or DefaultName of consoleType and
// port.
func (o Settings) Name(consoleType string, port int) string {
	if o.ProxyName != "" {
		return o.ProxyName
	}
	return DefaultName(consoleType, port)
}

// Serve makes core act on this proxy's kills and drains (SetAddress'
// address is announced too): a kill ends its session with its reason's
// sentence, a drain runs core.DrainUntil(shutdownDelay, its deadline) and
// marks the announcement draining. p may be nil (no etcd).
func (p *Publisher) Serve(core *sessions.Core, addr net.Addr, shutdownDelay time.Duration) {
	if p == nil {
		return
	}
	p.SetAddress(addr.String())
	p.Watch(func(id string, k registry.SessionKill) {
		core.Kill(id, k.Reason, k.By)
	}, func(d registry.ProxyDrain) {
		p.log.Info("drain requested", "by", d.By, "deadline", d.Deadline.Format(time.RFC3339))
		p.SetDraining(d.Deadline)
		core.DrainUntil(shutdownDelay, d.Deadline)
	})
}

// Live is p as a sessions.Live, nil when p is nil (no etcd): a nil
// *Publisher in the interface would not compare equal to nil.
func (p *Publisher) Live() sessions.Live {
	if p == nil {
		return nil
	}
	return p
}
