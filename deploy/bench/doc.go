// Package bench holds vncgate's benchmarks, run by `make bench`: relay
// throughput through novnc-proxy, xvp-proxy and websockify against a plain Go
// TCP relay, session setup latency, the cost of VeNCrypt between the proxies
// and the VNC server (auth_schemes = vencrypt: throughput and whole RFB
// handshakes beside the plain path), the cost of authorising a call (pkg/authn's
// gRPC guard) against session setup, memory per idle session at 1,000 and
// 10,000 sessions, the GetConsoleURL rate over REST and gRPC on a single
// embedded etcd and on a 3-member cluster (testkit/etcd), and a reconnect
// storm: up to 10,000 xvp sessions (as many as the open-file limit allows)
// reconnecting at once to a proxy that just restarted, with the CPU each
// process spends per reconnect (STORM_PROFILE_DIR=dir also writes CPU
// profiles of the proxy and consoleauth during the storm). A last table
// gathers issue 11's targets (storm, setup and CheckToken ratios, mint rate
// against the etcd txn rate on one and three members) with their verdicts.
//
// Everything is measured in one run, on loopback, against the services
// running as separate processes (deploy/devstack), and printed as one table
// of absolute figures and of ratios against baselines measured in the same
// run, so a shared, noisy machine moves both sides of a ratio alike. A missed
// target is printed as MISSED, never failed: the benchmarks report figures,
// the tests elsewhere judge behaviour. Only a broken set-up fails the run.
//
// The package has no exported API; the code lives in its test files.
package bench
