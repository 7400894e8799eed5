package grpcapi

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	computeagentv1 "github.com/vncgate/vncgate/pkg/api/computeagent/v1"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
	"github.com/vncgate/vncgate/services/compute-agent/internal/driver/static"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const (
	uuidRunning   = "11111111-0000-0000-0000-000000000001"
	uuidNoHost    = "11111111-0000-0000-0000-000000000002"
	uuidAnyAddr   = "11111111-0000-0000-0000-000000000003"
	uuidStopped   = "11111111-0000-0000-0000-000000000004"
	uuidNoConsole = "11111111-0000-0000-0000-000000000005"
	uuidNamed     = "11111111-0000-0000-0000-000000000006"
	uuidUnknown   = "99999999-0000-0000-0000-000000000000"
	// uuidDown makes the test driver answer ErrUnavailable.
	uuidDown = "dddddddd-0000-0000-0000-000000000000"

	proxyClientAddress = "192.0.2.10"
)

const inventory = `{"instances": [
	{"uuid": "` + uuidRunning + `", "vnc_host": "127.0.0.1", "vnc_port": 5901},
	{"uuid": "` + uuidNoHost + `", "vnc_port": 5902},
	{"uuid": "` + uuidAnyAddr + `", "vnc_host": "0.0.0.0", "vnc_port": 5903, "internal_access_path": "/vnc?x=1"},
	{"uuid": "` + uuidStopped + `", "vnc_host": "127.0.0.1", "vnc_port": 5904, "state": "stopped"},
	{"uuid": "` + uuidNoConsole + `"},
	{"uuid": "` + uuidNamed + `", "vnc_host": "Compute-1.example", "vnc_port": 5906}
]}`

// hypervisorDown wraps a driver and fails for uuidDown as an unreachable
// hypervisor would.
type hypervisorDown struct{ driver.Driver }

func (h hypervisorDown) Console(ctx context.Context, uuid string) (driver.Console, error) {
	if uuid == uuidDown {
		return driver.Console{}, fmt.Errorf("libvirt: connection refused: %w", driver.ErrUnavailable)
	}
	return h.Driver.Console(ctx, uuid)
}

// startAPI serves the API over real gRPC on loopback and returns a client.
func startAPI(t *testing.T) computeagentv1.ComputeAgentServiceClient {
	t.Helper()
	path := filepath.Join(t.TempDir(), "inventory.json")
	if err := os.WriteFile(path, []byte(inventory), 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := static.Open(path, static.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	computeagentv1.RegisterComputeAgentServiceServer(srv, New(hypervisorDown{d}, proxyClientAddress, slog.New(slog.DiscardHandler)))
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return computeagentv1.NewComputeAgentServiceClient(conn)
}

func TestGetConsole(t *testing.T) {
	client := startAPI(t)
	tests := []struct {
		name        string
		uuid        string
		consoleType string
		want        *computeagentv1.GetConsoleResponse
		wantCode    codes.Code
	}{
		{"running", uuidRunning, "novnc", &computeagentv1.GetConsoleResponse{Host: "127.0.0.1", Port: 5901}, codes.OK},
		{"xvpvnc", uuidRunning, "xvpvnc", &computeagentv1.GetConsoleResponse{Host: "127.0.0.1", Port: 5901}, codes.OK},
		{"no host: proxyclient address", uuidNoHost, "novnc", &computeagentv1.GetConsoleResponse{Host: proxyClientAddress, Port: 5902}, codes.OK},
		{"any address: proxyclient address", uuidAnyAddr, "", &computeagentv1.GetConsoleResponse{Host: proxyClientAddress, Port: 5903, InternalAccessPath: "/vnc?x=1"}, codes.OK},
		{"not found", uuidUnknown, "novnc", nil, codes.NotFound},
		{"not running", uuidStopped, "novnc", nil, codes.FailedPrecondition},
		{"no console", uuidNoConsole, "novnc", nil, codes.InvalidArgument},
		{"hypervisor down", uuidDown, "novnc", nil, codes.Unavailable},
		{"empty uuid", "", "novnc", nil, codes.InvalidArgument},
		{"unknown console type", uuidRunning, "spice-html5", nil, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got, err := client.GetConsole(ctx, &computeagentv1.GetConsoleRequest{InstanceUuid: tt.uuid, ConsoleType: tt.consoleType})
			if code := status.Code(err); code != tt.wantCode {
				t.Fatalf("code: got %v (%v), want %v", code, err, tt.wantCode)
			}
			if tt.want == nil {
				if msg := status.Convert(err).Message(); msg == "" || msg != strings.ToLower(msg[:1])+msg[1:] {
					t.Errorf("message: got %q, want a lower-case reason", msg)
				}
				return
			}
			if got.GetHost() != tt.want.Host || got.GetPort() != tt.want.Port || got.GetInternalAccessPath() != tt.want.InternalAccessPath {
				t.Errorf("got %v, want %v", got, tt.want)
			}
		})
	}
}

func TestValidateConsolePort(t *testing.T) {
	client := startAPI(t)
	tests := []struct {
		name       string
		uuid       string
		host       string
		port       int32
		wantValid  bool
		wantReason string // a part of it
		wantCode   codes.Code
	}{
		{"right pair", uuidRunning, "127.0.0.1", 5901, true, "", codes.OK},
		{"right pair, proxyclient address", uuidNoHost, proxyClientAddress, 5902, true, "", codes.OK},
		{"host name in another case", uuidNamed, "compute-1.EXAMPLE", 5906, true, "", codes.OK},
		{"IPv4 in IPv6 form", uuidRunning, "::ffff:127.0.0.1", 5901, true, "", codes.OK},
		{"wrong port", uuidRunning, "127.0.0.1", 5902, false, "port 5902 is not the instance's console", codes.OK},
		{"wrong host", uuidRunning, "127.0.0.2", 5901, false, `host "127.0.0.2" is not the instance's console`, codes.OK},
		{"listen address is not the proxyclient one", uuidAnyAddr, "0.0.0.0", 5903, false, "host", codes.OK},
		{"not running", uuidStopped, "127.0.0.1", 5904, false, "not running", codes.OK},
		{"not found", uuidUnknown, "127.0.0.1", 5901, false, "not found", codes.OK},
		{"no console", uuidNoConsole, "127.0.0.1", 5905, false, "no vnc console", codes.OK},
		{"hypervisor down", uuidDown, "127.0.0.1", 5901, false, "", codes.Unavailable},
		{"empty uuid", "", "127.0.0.1", 5901, false, "", codes.InvalidArgument},
		{"empty host", uuidRunning, "", 5901, false, "", codes.InvalidArgument},
		{"port 0", uuidRunning, "127.0.0.1", 0, false, "", codes.InvalidArgument},
		{"port too large", uuidRunning, "127.0.0.1", 70000, false, "", codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got, err := client.ValidateConsolePort(ctx, &computeagentv1.ValidateConsolePortRequest{
				InstanceUuid: tt.uuid, ConsoleType: "novnc", Host: tt.host, Port: tt.port,
			})
			if code := status.Code(err); code != tt.wantCode {
				t.Fatalf("code: got %v (%v), want %v", code, err, tt.wantCode)
			}
			if err != nil {
				return
			}
			if got.GetValid() != tt.wantValid || !strings.Contains(got.GetReason(), tt.wantReason) {
				t.Errorf("got valid=%v reason %q, want valid=%v reason containing %q", got.GetValid(), got.GetReason(), tt.wantValid, tt.wantReason)
			}
			if !got.GetValid() && got.GetReason() == "" {
				t.Error("refused without a reason")
			}
		})
	}
}
