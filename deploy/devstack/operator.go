package devstack

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vncgate/vncgate/pkg/authn"
	"github.com/vncgate/vncgate/testkit/certs"
)

// OperatorName is the operator's name in the stack: its certificate's
// common name, which audit lines and kill and drain records carry.
const OperatorName = "devstack-operator"

// VNCGateCtl is the name of the operator CLI's binary in Options.Bin.
const VNCGateCtl = "vncgatectl"

// OperatorConfig writes, once per call, an operator certificate (role
// operator, from the stack's CA) into Dir/tls/operator/ and the settings
// file of vncgatectl naming it and every consoleauth replica's gRPC
// address, Dir/vncgatectl.conf, and returns the file's path.
func (w *World) OperatorConfig() (string, error) {
	f, err := w.CA.WriteIdentityFiles(filepath.Join(w.Dir, "tls", "operator"),
		certs.Identity{Name: OperatorName, Role: string(authn.RoleOperator)}, "localhost")
	if err != nil {
		return "", fmt.Errorf("operator certificate: %w", err)
	}
	var addrs []string
	for _, p := range w.Processes(ConsoleAuth) {
		addrs = append(addrs, w.Addr(p.Ports.ConsoleAuthGRPC))
	}
	path := filepath.Join(w.Dir, "vncgatectl.conf")
	body := fmt.Sprintf(`# vncgatectl settings for this devstack: %s --config %s status
consoleauth = %s
ca = %s
cert = %s
key = %s
`, filepath.Join(w.Bin, VNCGateCtl), path, strconv.Quote(strings.Join(addrs, ",")),
		strconv.Quote(f.CA), strconv.Quote(f.Cert), strconv.Quote(f.Key))
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		return "", err
	}
	return path, nil
}

// VNCGateCtlCommand is the shell command line running vncgatectl with
// OperatorConfig's settings and args, e.g. "status".
func (w *World) VNCGateCtlCommand(config string, args ...string) string {
	return strings.Join(append([]string{filepath.Join(w.Bin, VNCGateCtl), "--config", config}, args...), " ")
}
