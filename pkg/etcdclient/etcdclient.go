// Package etcdclient builds the one etcd client of a vncgate process, the
// same way in every service:
//
//   - New never waits for etcd: the client connects in the background, so a
//     service starts (and answers "unavailable") while etcd is still down,
//     and each call's own timeout says how long to wait.
//   - Reconnects back off from 100 ms to at most MaxReconnectDelay (gRPC's
//     default grows to two minutes, which would keep a restarted etcd from
//     seeing an agent's registration or a proxy's revocation watch for that
//     long).
//   - Keepalive pings find a dead connection within DialKeepAliveTime +
//     DialKeepAliveTimeout while a call, a watch (the proxies' revocations)
//     or a lease keep-alive (the agents' registrations) is open, so it moves
//     to another endpoint instead of hanging. (Not when idle: etcd's server
//     answers pings without a stream with "too many pings".)
//   - The client's own zap logger is off: every etcd failure reaches a
//     caller that logs it through slog with the service's keys.
//   - TLS from a tlsconfig.Files group (etcd_cert, etcd_key, etcd_ca). Under
//     etcd authentication with --client-cert-auth the certificate's common
//     name is the etcd user, so no password option exists.
//
// Roles (roles.go) is the least-privilege plan those users live under: one
// etcd role per service, applied by deploy/cmd/etcd-roles.
package etcdclient

import (
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

const (
	// MaxReconnectDelay caps the wait between attempts to reach etcd again.
	MaxReconnectDelay = 2 * time.Second
	// DialKeepAliveTime is the idle time after which the client pings etcd.
	DialKeepAliveTime = 10 * time.Second
	// DialKeepAliveTimeout is how long a ping may go unanswered before the
	// connection is closed and another endpoint tried.
	DialKeepAliveTimeout = 5 * time.Second
	// DialTimeout bounds the client's own set-up calls (authentication);
	// it does not make New wait for a connection.
	DialTimeout = 5 * time.Second
)

// New returns a client of endpoints, with TLS from files when they are
// given. It does not wait for etcd to answer.
func New(endpoints []string, files tlsconfig.Files) (*clientv3.Client, error) {
	if len(endpoints) == 0 {
		return nil, errors.New("etcd: no endpoints")
	}
	tlsCfg, err := files.Client()
	if err != nil {
		return nil, fmt.Errorf("etcd tls: %w", err)
	}
	cli, err := clientv3.New(Config(endpoints, tlsCfg))
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return cli, nil
}

// Config is New's client configuration, for callers that hold a
// *tls.Config already (nil: plaintext).
func Config(endpoints []string, tlsCfg *tls.Config) clientv3.Config {
	return clientv3.Config{
		Endpoints:            endpoints,
		TLS:                  tlsCfg,
		DialTimeout:          DialTimeout,
		DialKeepAliveTime:    DialKeepAliveTime,
		DialKeepAliveTimeout: DialKeepAliveTimeout,
		Logger:               zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   MaxReconnectDelay,
			},
			MinConnectTimeout: 5 * time.Second,
		})},
	}
}
