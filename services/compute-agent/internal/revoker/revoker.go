// Package revoker ends an instance's console tokens through consoleauth's
// RevokeInstanceTokens RPC: the compute agent's registration.Revoker.
package revoker

import (
	"context"
	"fmt"
	"log/slog"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
)

// ConsoleAuth revokes tokens through a consoleauth client.
type ConsoleAuth struct {
	client consoleauthv1.ConsoleAuthServiceClient
	log    *slog.Logger
}

// New returns a revoker calling client.
func New(client consoleauthv1.ConsoleAuthServiceClient, log *slog.Logger) *ConsoleAuth {
	return &ConsoleAuth{client: client, log: log}
}

// RevokeInstanceTokens deletes every token of the instance; reason is a code
// of registry.RevocationReasons, whose sentence the users whose sessions end
// are shown. The error carries consoleauth's status.
func (r *ConsoleAuth) RevokeInstanceTokens(ctx context.Context, uuid, reason string) error {
	resp, err := r.client.RevokeInstanceTokens(ctx, &consoleauthv1.RevokeInstanceTokensRequest{InstanceUuid: uuid, Reason: reason})
	if err != nil {
		return fmt.Errorf("revoke tokens of instance %s: %w", uuid, err)
	}
	r.log.Debug("consoleauth revoked tokens", "instance", uuid, "count", resp.GetRevokedCount())
	return nil
}
