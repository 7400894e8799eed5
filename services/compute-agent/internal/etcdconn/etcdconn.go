// Package etcdconn is how the compute agent configures its one etcd client:
// a dial timeout, a reconnect backoff capped at MaxReconnectDelay (gRPC's
// default grows to two minutes, which would keep a restarted etcd from
// seeing the agent again for that long), and no zap logging (the agent logs
// what matters through slog).
package etcdconn

import (
	"crypto/tls"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// MaxReconnectDelay caps the wait between attempts to reach etcd again.
const MaxReconnectDelay = 2 * time.Second

// Config returns the client configuration for endpoints; tlsConfig may be
// nil for plaintext.
func Config(endpoints []string, tlsConfig *tls.Config) clientv3.Config {
	return clientv3.Config{
		Endpoints:            endpoints,
		TLS:                  tlsConfig,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
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
