package logging

// The keys several services log, named once. A key's value means the same
// thing in every service (see the package comment).
const (
	KeyService     = "service"
	KeyError       = "error"
	KeyInstance    = "instance"
	KeyTokenHash   = "token_hash"
	KeySession     = "session"
	KeyRequestID   = "request_id"
	KeyProxy       = "proxy"
	KeyClient      = "client"
	KeyHost        = "host"
	KeyMethod      = "method"
	KeyCode        = "code"
	KeyConsoleType = "console_type"
	KeyVNC         = "vnc"
	KeyAddr        = "addr"
	KeyReason      = "reason"
	KeyMessage     = "message"
	KeyDurationMS  = "duration_ms"
	KeyCaller      = "caller"
	KeyRole        = "role"
	KeyStatus      = "status"
)

// Keys is every key a vncgate service's log record may carry, with what its
// value is. A test of this package fails on a log call in the services or
// pkg/ whose key is not here: add a key only when no key here already names
// the same thing.
var Keys = map[string]string{
	// Named once across services.
	KeyService:     "the service: consoleauth, compute-agent, novnc-proxy, xvp-proxy (added by New)",
	KeyError:       "an error's text",
	KeyInstance:    "an instance UUID (also one that failed to parse)",
	KeyTokenHash:   "the first 12 hex digits of a token's SHA-256 (registry.HashPrefix); never a token",
	KeySession:     "a console session's ID within its proxy",
	KeyRequestID:   "the request's id (package requestid), added from the context by the handler",
	KeyProxy:       "a proxy's name, as registered in etcd",
	KeyClient:      "a client's IP address, as the service believes it (trusted_proxies)",
	KeyHost:        "a compute host's name, as registered in etcd",
	KeyMethod:      "a gRPC full method name, or an HTTP method and path (token redacted)",
	KeyCode:        "a result code: a gRPC code name, or a WebSocket close code in audit events",
	KeyConsoleType: "novnc or xvpvnc",
	KeyVNC:         "a VNC server's address, host:port",
	KeyAddr:        "an address this service listens on",
	KeyReason:      "why something ended or was refused: a fixed word (revoked, idle_timeout, …)",
	KeyMessage:     "the sentence a user or operator is given with it",
	KeyDurationMS:  "how long a call took, in milliseconds",
	KeyCaller:      "an authenticated caller's name (certificate, key or Keystone user)",
	KeyRole:        "an authenticated caller's role (api, mint, proxy, compute, consoleauth, operator)",
	KeyStatus:      "an HTTP status code",

	// Audit events (package audit documents each).
	"audit":            "true on an audit event",
	"event":            "an event's kind (audit: session_end, refusal; drivers: a lifecycle event's name)",
	"minted_by":        "who minted a session's token",
	"started":          "when a session started",
	"duration_seconds": "how long a session lasted, in seconds",
	"bytes_to_client":  "bytes relayed to the client",
	"bytes_to_server":  "bytes relayed to the VNC server",
	"ended_by":         "which side ended a session",
	"queue":            "a queue's length",
	"path":             "a file's path",

	// Start-up lines: settings, by their option names.
	"advertise":                  "the address consoleauth dials to reach this agent",
	"base_url":                   "a proxy base URL",
	"console_types":              "enabled console types",
	"driver":                     "the compute agent's driver",
	"drain_timeout":              "how long a drain lets sessions run",
	"endpoints":                  "etcd endpoints, or a callee's endpoints",
	"grpc":                       "consoleauth's gRPC listen address",
	"rest":                       "consoleauth's REST listen address",
	"consoleauth":                "consoleauth's address as a proxy dials it",
	"max_connections":            "a proxy's session cap",
	"max_connections_per_client": "a proxy's per-client session cap",
	"max_sessions_per_instance":  "a proxy's per-instance session cap",
	"shutdown_delay":             "how long a stopping proxy keeps serving while readiness is red",
	"single_use_tokens":          "whether a token opens one session",
	"token_ttl":                  "a token's lifetime",
	"token_cache_size":           "consoleauth's bound on token records kept in memory",
	"trusted_proxies":            "the networks whose X-Forwarded-For is believed",
	"tls":                        "whether a listener or client uses TLS",
	"pages":                      "where novnc-proxy's pages come from",
	"ignored_options":            "options of the config files this service does not know",
	"ignored_sections":           "sections of the config files this service does not know",
	"files":                      "the config files read",
	"inventory":                  "the static driver's inventory file",
	"uri":                        "a libvirt connection URI",
	"socket":                     "a QMP socket's path",
	"file":                       "a file's path",
	"ca":                         "a CA file's path",
	"cert":                       "a certificate file's path",
	"key":                        "a key file's path, or an etcd key",
	"ttl":                        "a lease's time to live",
	"probe_timeout":              "how long a health probe may take",
	"revision":                   "an etcd revision",

	// Retries, counts and states.
	"attempt":          "the number of an attempt, from 1",
	"retry_in":         "the wait before the next attempt",
	"wait":             "a wait before something happens",
	"waited":           "how long something was waited for",
	"deadline":         "when something will be cut",
	"count":            "a count of the things the message names",
	"sessions":         "a count of sessions",
	"sessions_ended":   "a count of sessions ended",
	"instances":        "a count of instances",
	"pending":          "a count of things waiting",
	"keys":             "a count of API keys",
	"slot":             "a per-instance session slot (registry)",
	"holder":           "what holds a slot: {proxy}/{session}",
	"lease_ttl":        "the TTL granted to a proxy's lease",
	"pruned":           "a count of things removed",
	"written":          "a count of things written",
	"changes":          "a count of changes",
	"failed_accepts":   "a count of failed accepts",
	"lost_for":         "how long something was lost",
	"unavailable_for":  "how long something was unavailable",
	"renew_at":         "when a lease or certificate is renewed",
	"expires_at":       "when something expires",
	"serving":          "whether the service says SERVING",
	"revoked":          "whether, or how many, tokens were revoked",
	"revocation_watch": "whether the revocation watch is up",
	"reported":         "what a remote end reported",
	"setup":            "a session's setup time",
	"by":               "who asked for a session kill or a proxy drain (an operator's name, as etcd's records say)",
	"found":            "whether the thing named was found",
	"grace":            "a grace period",
	"timeout":          "a time limit that ran out",
	"op":               "an etcd operation's name",
	"lease":            "an etcd lease ID",
	"options":          "options a caller sent",
	"before":           "the value before a change",
	"after":            "the value after a change",
	"last":             "the last value seen",

	// Addresses and names.
	"address":   "an address a service is reached at",
	"addresses": "the addresses a name resolved to",
	"endpoint":  "one endpoint of a callee",
	"port":      "a port",
	"scheme":    "a URL scheme",
	"via":       "how a caller authenticated (certificate, key, keystone, gateway)",
	"owner":     "an instance's compute host, as etcd says",
	"user":      "a Keystone user",
	"project":   "a Keystone project",
	"domain":    "a libvirt domain's name",
	"domains":   "a count of libvirt domains",
	"detail":    "a libvirt event's detail",
	"kind":      "an instance lifecycle event's kind",
	"data":      "a QMP event's data",
	"view_only": "whether a console is view-only",

	// Protocols.
	"rfb_version":   "an RFB protocol version",
	"security_type": "an RFB security type",
	"subprotocol":   "a WebSocket subprotocol",
	"version":       "a version",
}
