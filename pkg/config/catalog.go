package config

import (
	"slices"
	"strings"
)

// The catalogue: every option name a vncgate service may meet in a file, by
// section, so that a file shared by several services (nova.conf) is judged
// the same way by each. A service may only declare catalogued options
// (declaring another panics, like redefining a flag), so the catalogue is
// always complete for vncgate's own options.

// Sections vncgate reads.
const (
	// SectionDefault is Nova's [DEFAULT].
	SectionDefault = "DEFAULT"
	// SectionVNC is Nova's [vnc].
	SectionVNC = "vnc"
	// SectionConsole is Nova's [console].
	SectionConsole = "console"
	// SectionConsoleAuth is Nova's [consoleauth].
	SectionConsoleAuth = "consoleauth"
	// SectionLibvirt is Nova's [libvirt].
	SectionLibvirt = "libvirt"
	// SectionVNCGate holds every option vncgate has and Nova does not.
	SectionVNCGate = "vncgate"
	// SectionKeystoneAuthToken is keystonemiddleware's [keystone_authtoken]
	// in nova.conf. Not strict: it holds dozens of keystonemiddleware and
	// keystoneauth options (memcached_servers, region_name, …) vncgate has
	// no use for.
	SectionKeystoneAuthToken = "keystone_authtoken"
)

// kind sorts catalogued names.
type kind int

const (
	// supported: some vncgate service reads it.
	supported kind = iota
	// novaOnly: Nova's, used by Nova services vncgate does not replace
	// (nova-compute's server_listen): ignored without a word.
	novaOnly
	// unsupported: an option of a Nova service vncgate replaces that vncgate
	// does not implement: accepted with a warning, by the services listed.
	unsupported
	// deprecated: an old name Nova still reads for the option in of.
	deprecated
)

type entry struct {
	kind kind
	// services are, for unsupported options, the vncgate services that
	// would have honoured it.
	services []string
	// harmless are values of an unsupported option that ask for what
	// vncgate does anyway (auth_schemes = none): no warning.
	harmless []string
	// why says, for unsupported options, what vncgate does instead.
	why string
	// of is, for deprecated names, the section and name they stand for.
	of key
}

type key struct{ section, name string }

func (k key) String() string { return "[" + k.section + "] " + k.name }

// strict sections are those whose every name is catalogued: an unknown name
// in one of them, in a service that reads the section, is an error naming
// file and line. [DEFAULT] and [libvirt] hold hundreds of Nova options and
// are not strict: names vncgate does not know are ignored there.
var strict = map[string]bool{SectionVNCGate: true, SectionVNC: true, SectionConsole: true, SectionConsoleAuth: true}

var proxies = []string{"novnc-proxy", "xvp-proxy"}

var catalog = map[key]entry{
	// [vnc], as in Nova 26's generated sample, plus the xvpvncproxy_*
	// options Nova had there until it dropped nova-xvpvncproxy.
	{SectionVNC, "enabled"}:                       {kind: supported},
	{SectionVNC, "server_listen"}:                 {kind: supported},
	{SectionVNC, "server_proxyclient_address"}:    {kind: supported},
	{SectionVNC, "novncproxy_base_url"}:           {kind: supported},
	{SectionVNC, "novncproxy_host"}:               {kind: supported},
	{SectionVNC, "novncproxy_port"}:               {kind: supported},
	{SectionVNC, "xvpvncproxy_base_url"}:          {kind: supported},
	{SectionVNC, "xvpvncproxy_host"}:              {kind: supported},
	{SectionVNC, "xvpvncproxy_port"}:              {kind: supported},
	{SectionVNC, "keymap"}:                        {kind: novaOnly},
	{SectionVNC, "auth_schemes"}:                  {kind: supported},
	{SectionVNC, "vencrypt_client_key"}:           {kind: supported},
	{SectionVNC, "vencrypt_client_cert"}:          {kind: supported},
	{SectionVNC, "vencrypt_ca_certs"}:             {kind: supported},
	{SectionVNC, "vncserver_listen"}:              {kind: deprecated, of: key{SectionVNC, "server_listen"}},
	{SectionVNC, "vncserver_proxyclient_address"}: {kind: deprecated, of: key{SectionVNC, "server_proxyclient_address"}},

	// [console]
	{SectionConsole, "allowed_origins"}:     {kind: supported},
	{SectionConsole, "ssl_ciphers"}:         {kind: supported},
	{SectionConsole, "ssl_minimum_version"}: {kind: supported},

	// [consoleauth]; enforce_session_timeout is Nova 2024.1's.
	{SectionConsoleAuth, "token_ttl"}:               {kind: supported},
	{SectionConsoleAuth, "token_cache_size"}:        {kind: supported},
	{SectionConsoleAuth, "enforce_session_timeout"}: {kind: supported},

	// [DEFAULT]: the console proxies' options (nova/conf/novnc.py), the
	// host's identity, oslo.log's debug, and the old names of options that
	// moved to [vnc], [console] and [consoleauth].
	{SectionDefault, "cert"}:           {kind: supported},
	{SectionDefault, "key"}:            {kind: supported},
	{SectionDefault, "ssl_only"}:       {kind: supported},
	{SectionDefault, "source_is_ipv6"}: {kind: supported},
	{SectionDefault, "web"}:            {kind: supported},
	{SectionDefault, "host"}:           {kind: supported},
	{SectionDefault, "my_ip"}:          {kind: supported},
	{SectionDefault, "debug"}:          {kind: supported},
	{SectionDefault, "record"}: {kind: unsupported, services: []string{"novnc-proxy"}, harmless: []string{""},
		why: "session recording is not implemented"},
	{SectionDefault, "daemon"}: {kind: unsupported, services: proxies, harmless: []string{"false", "no", "off", "0"},
		why: "vncgate services run in the foreground; let systemd supervise them"},
	{SectionDefault, "vnc_enabled"}:             {kind: deprecated, of: key{SectionVNC, "enabled"}},
	{SectionDefault, "console_allowed_origins"}: {kind: deprecated, of: key{SectionConsole, "allowed_origins"}},
	{SectionDefault, "console_token_ttl"}:       {kind: deprecated, of: key{SectionConsoleAuth, "token_ttl"}},

	// [libvirt]
	{SectionLibvirt, "connection_uri"}: {kind: supported},

	// [keystone_authtoken]: keystoneauth's password plugin and the
	// keystonemiddleware options consoleauth's Keystone validation honours.
	{SectionKeystoneAuthToken, "auth_url"}:             {kind: supported},
	{SectionKeystoneAuthToken, "username"}:             {kind: supported},
	{SectionKeystoneAuthToken, "password"}:             {kind: supported},
	{SectionKeystoneAuthToken, "project_name"}:         {kind: supported},
	{SectionKeystoneAuthToken, "user_domain_name"}:     {kind: supported},
	{SectionKeystoneAuthToken, "project_domain_name"}:  {kind: supported},
	{SectionKeystoneAuthToken, "cafile"}:               {kind: supported},
	{SectionKeystoneAuthToken, "http_connect_timeout"}: {kind: supported},
	{SectionKeystoneAuthToken, "token_cache_time"}:     {kind: supported},
	{SectionKeystoneAuthToken, "auth_type"}: {kind: unsupported, services: []string{"consoleauth"}, harmless: []string{"password", "v3password"},
		why: "only password authentication to Keystone is implemented"},
	{SectionKeystoneAuthToken, "insecure"}: {kind: unsupported, services: []string{"consoleauth"}, harmless: []string{"false", "no", "off", "0"},
		why: "Keystone's certificate is always verified; name its CA in cafile"},

	// [vncgate]: vncgate's own options, whichever service reads them.
	{SectionVNCGate, "allow_plaintext"}:           {kind: supported},
	{SectionVNCGate, "admin_allow_remote"}:        {kind: supported},
	{SectionVNCGate, "proxy_name"}:                {kind: supported},
	{SectionVNCGate, "live_sessions_ttl"}:         {kind: supported},
	{SectionVNCGate, "live_sessions_refresh"}:     {kind: supported},
	{SectionVNCGate, "audit_file"}:                {kind: supported},
	{SectionVNCGate, "audit_syslog"}:              {kind: supported},
	{SectionVNCGate, "api_keys_file"}:             {kind: supported},
	{SectionVNCGate, "cert_role_source"}:          {kind: supported},
	{SectionVNCGate, "rest_auth"}:                 {kind: supported},
	{SectionVNCGate, "keystone_mint_roles"}:       {kind: supported},
	{SectionVNCGate, "rest_allowed_hosts"}:        {kind: supported},
	{SectionVNCGate, "grpc_listen"}:               {kind: supported},
	{SectionVNCGate, "rest_listen"}:               {kind: supported},
	{SectionVNCGate, "advertise_address"}:         {kind: supported},
	{SectionVNCGate, "consoleauth_address"}:       {kind: supported},
	{SectionVNCGate, "etcd_endpoints"}:            {kind: supported},
	{SectionVNCGate, "etcd_cert"}:                 {kind: supported},
	{SectionVNCGate, "etcd_key"}:                  {kind: supported},
	{SectionVNCGate, "etcd_ca"}:                   {kind: supported},
	{SectionVNCGate, "etcd_timeout"}:              {kind: supported},
	{SectionVNCGate, "grpc_cert"}:                 {kind: supported},
	{SectionVNCGate, "grpc_key"}:                  {kind: supported},
	{SectionVNCGate, "grpc_ca"}:                   {kind: supported},
	{SectionVNCGate, "rest_cert"}:                 {kind: supported},
	{SectionVNCGate, "rest_key"}:                  {kind: supported},
	{SectionVNCGate, "rest_ca"}:                   {kind: supported},
	{SectionVNCGate, "compute_timeout"}:           {kind: supported},
	{SectionVNCGate, "enabled_console_types"}:     {kind: supported},
	{SectionVNCGate, "single_use_tokens"}:         {kind: supported},
	{SectionVNCGate, "driver"}:                    {kind: supported},
	{SectionVNCGate, "inventory_file"}:            {kind: supported},
	{SectionVNCGate, "qmp_sockets"}:               {kind: supported},
	{SectionVNCGate, "registration_ttl"}:          {kind: supported},
	{SectionVNCGate, "trusted_proxies"}:           {kind: supported},
	{SectionVNCGate, "novnc_core_dir"}:            {kind: supported},
	{SectionVNCGate, "handshake_timeout"}:         {kind: supported},
	{SectionVNCGate, "dial_timeout"}:              {kind: supported},
	{SectionVNCGate, "server_greeting_timeout"}:   {kind: supported},
	{SectionVNCGate, "ping_interval"}:             {kind: supported},
	{SectionVNCGate, "idle_timeout"}:              {kind: supported},
	{SectionVNCGate, "max_session_length"}:        {kind: supported},
	{SectionVNCGate, "revocation_grace"}:          {kind: supported},
	{SectionVNCGate, "max_sessions_per_instance"}: {kind: supported},
	{SectionVNCGate, "failed_token_limit"}:        {kind: supported},
	{SectionVNCGate, "failed_token_window"}:       {kind: supported},
	{SectionVNCGate, "drain_timeout"}:             {kind: supported},
	{SectionVNCGate, "shutdown_delay"}:            {kind: supported},
	{SectionVNCGate, "admin_listen"}:              {kind: supported},
	{SectionVNCGate, "tcp_keepalive"}:             {kind: supported},
	{SectionVNCGate, "log_level"}:                 {kind: supported},
	{SectionVNCGate, "log_format"}:                {kind: supported},
	{SectionVNCGate, "otlp_endpoint"}:             {kind: supported},
	{SectionVNCGate, "vencrypt_verify_hostname"}:  {kind: supported},
	{SectionVNCGate, "keystone_cache_size"}:       {kind: supported},

	// The proxies' connection caps (pkg/edge).
	{SectionVNCGate, "max_connections"}:            {kind: supported},
	{SectionVNCGate, "max_connections_per_client"}: {kind: supported},
}

// aliases are the deprecated names of k, sorted.
func aliases(k key) []key {
	var out []key
	for n, e := range catalog {
		if e.kind == deprecated && e.of == k {
			out = append(out, n)
		}
	}
	slices.SortFunc(out, func(a, b key) int { return strings.Compare(a.String(), b.String()) })
	return out
}

// namesIn lists the catalogued names of section, for suggestions.
func namesIn(section string) []string {
	var out []string
	for k := range catalog {
		if k.section == section {
			out = append(out, k.name)
		}
	}
	return out
}

// sectionsOf lists the sections where name is a supported option, sorted.
func sectionsOf(name string) []string {
	var out []string
	for k, e := range catalog {
		if k.name == name && e.kind == supported {
			out = append(out, k.section)
		}
	}
	slices.Sort(out)
	return out
}
