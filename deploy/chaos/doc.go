// Package chaos is vncgate's fault suite: it runs the world production
// runs (deploy/devstack with a 3-member etcd cluster, two replicas of
// consoleauth and of each proxy, HAProxy in front) under a bounded load — a
// mint every 20 ms, a new console every 50 ms through HAProxy, 20
// long-lived consoles echoing every 100 ms — and injects one fault at a
// time: the etcd leader killed, the quorum lost and back, a consoleauth
// replica killed, the compute agent killed and restarted, both proxies'
// first replicas drained by SIGTERM, an instance revoked while its consoles
// sit on every proxy replica.
//
// Each scenario asserts what users see: no long-lived console lost that
// was not meant to end, no accepted mint whose token then fails, every
// refusal a clear 503/409 (or the WebSocket's 4503/4409) whose text names
// the condition. It measures the worst refusal latency and the recovery
// time after the fault ends, prints them in a table, and asserts the
// issue's limits (1 s, 2 s) only with CHAOS_STRICT=1 (make chaos), so that
// make test never depends on the machine's speed.
//
// The package has only tests; this file holds its documentation.
package chaos
