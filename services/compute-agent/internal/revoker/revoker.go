// Package revoker ends an instance's console tokens through consoleauth's
// RevokeInstanceTokens RPC: the compute agent's registration.Revoker.
//
// Each revocation is a request of its own: it gets a new request id
// (package requestid), sent to consoleauth and logged on both sides, and is
// counted by result:
//
//	vncgate_compute_agent_revocations_total{result}  "revoked", or the gRPC code of a failure
package revoker

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/requestid"
)

// ConsoleAuth revokes tokens through a consoleauth client.
type ConsoleAuth struct {
	client consoleauthv1.ConsoleAuthServiceClient
	log    *slog.Logger
	sent   *prometheus.CounterVec
}

// New returns a revoker calling client. Its counter is registered with reg
// when reg is not nil.
func New(client consoleauthv1.ConsoleAuthServiceClient, log *slog.Logger, reg prometheus.Registerer) *ConsoleAuth {
	sent := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "vncgate_compute_agent_revocations_total",
		Help: `Token revocations sent to consoleauth, by result: "revoked" or the gRPC code of the failure.`,
	}, []string{"result"})
	// The results seen most, at zero from the start.
	for _, r := range []string{"revoked", codes.Unavailable.String(), codes.DeadlineExceeded.String(), codes.PermissionDenied.String()} {
		sent.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(sent)
	}
	return &ConsoleAuth{client: client, log: log, sent: sent}
}

// RevokeInstanceTokens deletes every token of the instance; reason is a code
// of registry.RevocationReasons, whose sentence the users whose sessions end
// are shown. The error carries consoleauth's status.
func (r *ConsoleAuth) RevokeInstanceTokens(ctx context.Context, uuid, reason string) error {
	if requestid.FromContext(ctx) == "" {
		ctx = requestid.NewContext(ctx, requestid.New())
	}
	resp, err := r.client.RevokeInstanceTokens(ctx, &consoleauthv1.RevokeInstanceTokensRequest{InstanceUuid: uuid, Reason: reason})
	if err != nil {
		// status.Code is a fixed set: the label stays bounded.
		r.sent.WithLabelValues(status.Code(err).String()).Inc()
		return fmt.Errorf("revoke tokens of instance %s: %w", uuid, err)
	}
	r.sent.WithLabelValues("revoked").Inc()
	r.log.DebugContext(ctx, "consoleauth revoked tokens", "instance", uuid, "count", resp.GetRevokedCount())
	return nil
}
