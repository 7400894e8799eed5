package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"testing"
	"time"

	"github.com/vncgate/vncgate/pkg/etcdembed/etcdtest"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
	"github.com/vncgate/vncgate/services/consoleauth/internal/server"
)

func TestParseFlags(t *testing.T) {
	t.Setenv("VNCGATE_TOKEN_TTL", "30")
	tests := []struct {
		name      string
		args      []string
		want      func(*server.Config)
		wantLevel slog.Level
		wantErr   bool
	}{
		{name: "defaults (token_ttl from the environment)", args: nil, want: func(*server.Config) {}},
		{name: "flags", args: []string{"-grpc_listen", "127.0.0.1:1", "-etcd_endpoints", "a:1, b:2", "-token_ttl", "5",
			"-enabled_console_types", "novnc", "-single_use_tokens", "-log_level", "debug", "-grpc_cert", "c", "-grpc_key", "k"},
			want: func(c *server.Config) {
				c.GRPCListen = "127.0.0.1:1"
				c.EtcdEndpoints = []string{"a:1", "b:2"}
				c.TokenTTL = 5 * time.Second
				c.EnabledConsoleTypes = []string{"novnc"}
				c.SingleUseTokens = true
				c.GRPCTLS = tlsconfig.Files{Cert: "c", Key: "k"}
			}, wantLevel: slog.LevelDebug},
		{name: "bad log level", args: []string{"-log_level", "loud"}, wantErr: true},
		{name: "zero ttl", args: []string{"-token_ttl", "0"}, wantErr: true},
		{name: "stray argument", args: []string{"extra"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, level, err := parseFlags(tt.args)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error: got %v, want error %v", err, tt.wantErr)
			}
			if tt.wantErr {
				return
			}
			want := server.Config{
				GRPCListen:          "0.0.0.0:6090",
				RESTListen:          "0.0.0.0:6091",
				EtcdEndpoints:       []string{"127.0.0.1:2379"},
				EtcdTimeout:         5 * time.Second,
				ComputeTimeout:      5 * time.Second,
				TokenTTL:            30 * time.Second,
				NoVNCBaseURL:        "http://127.0.0.1:6080/vnc_lite.html",
				XVPBaseURL:          "http://127.0.0.1:6081/console",
				EnabledConsoleTypes: []string{"novnc", "xvpvnc"},
			}
			tt.want(&want)
			if !reflect.DeepEqual(got, want) {
				t.Errorf("config:\ngot  %+v\nwant %+v", got, want)
			}
			if level != tt.wantLevel {
				t.Errorf("log level: got %v, want %v", level, tt.wantLevel)
			}
		})
	}
}

func TestRunServesUntilCanceled(t *testing.T) {
	etcd, _ := etcdtest.Start(t)
	grpcAddr, restAddr := freeAddr(t), freeAddr(t)
	cfg, _, err := parseFlags([]string{"-grpc_listen", grpcAddr, "-rest_listen", restAddr, "-etcd_endpoints", etcd.Endpoint})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, slog.New(slog.DiscardHandler)) }()

	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + restAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatalf("healthz never answered 200: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run after cancel: got %v, want nil", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return after cancel")
	}
	if c, err := net.DialTimeout("tcp", grpcAddr, time.Second); err == nil {
		c.Close()
		t.Errorf("gRPC listener still accepting after shutdown")
	}
}

func TestRunRefusesBadBaseURL(t *testing.T) {
	cfg, _, err := parseFlags([]string{"-novncproxy_base_url", "/relative", "-grpc_listen", "127.0.0.1:0", "-rest_listen", "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if err := run(context.Background(), cfg, slog.New(slog.DiscardHandler)); err == nil || errors.Is(err, context.Canceled) {
		t.Errorf("relative novncproxy_base_url: got %v, want a configuration error", err)
	}
}

// freeAddr returns a loopback address nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
