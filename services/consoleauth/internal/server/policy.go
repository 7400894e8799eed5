package server

import (
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
)

// Policy is who may call what, over gRPC and REST alike (REST runs through
// the same guard): the API layer mints, introspects and revokes; a
// Keystone member mints; proxies only check tokens; a compute agent only
// revokes, and authserver lets it revoke only its own host's instances.
// Anything else is refused.
var Policy = authn.Policy{
	consoleauthv1.ConsoleAuthService_GetConsoleURL_FullMethodName:        {authn.RoleAPI, authn.RoleMint},
	consoleauthv1.ConsoleAuthService_GetVNCConsole_FullMethodName:        {authn.RoleAPI, authn.RoleMint},
	consoleauthv1.ConsoleAuthService_GetConsoleAuthToken_FullMethodName:  {authn.RoleAPI},
	consoleauthv1.ConsoleAuthService_RevokeInstanceTokens_FullMethodName: {authn.RoleAPI, authn.RoleCompute, authn.RoleOperator},
	consoleauthv1.ConsoleAuthService_CheckToken_FullMethodName:           {authn.RoleProxy},
	// The operator's fleet view (vncgatectl): its role alone.
	consoleauthv1.OperationsService_ListSessions_FullMethodName: {authn.RoleOperator},
	consoleauthv1.OperationsService_KillSession_FullMethodName:  {authn.RoleOperator},
	consoleauthv1.OperationsService_DrainProxy_FullMethodName:   {authn.RoleOperator},
	consoleauthv1.OperationsService_GetStatus_FullMethodName:    {authn.RoleOperator},
}

// noCertificate is the refusal of a gRPC call without a client
// certificate.
const noCertificate = "gRPC callers must present a certificate: configure grpc_cert/grpc_key/grpc_ca"

// MaxRecvMsgSize caps a gRPC request: consoleauth's largest is a few
// hundred bytes.
const MaxRecvMsgSize = 64 << 10
