// Package grafana holds vncgate's Grafana dashboard, vncgate.json: live
// sessions, setup latency, refusals by reason, bytes relayed, gRPC latency
// and codes per method (server and client), readiness (consoleauth's etcd,
// the proxies' revocation watch), compute agents (registered, driver up,
// instances, driver events, revocations sent) and what build runs where.
//
// Import it in Grafana with a Prometheus data source that scrapes every
// service's admin listener (/metrics). Its test starts the devstack world
// and checks that every metric a panel queries is exported by some service.
package grafana

import _ "embed"

// Dashboard is vncgate.json.
//
//go:embed vncgate.json
var Dashboard []byte
