package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/testkit/etcd"
)

// TestRun applies the plan to a real etcd with client-certificate auth as
// an operator would, then checks a service user's rights.
func TestRun(t *testing.T) {
	srv := etcd.StartSecure(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	root := srv.ClientFiles(t, "root")
	args := []string{"-endpoints", srv.Endpoint, "-cacert", root.CA, "-cert", root.Cert, "-key", root.Key, "-hosts", "cn1, cn2"}
	var out, errOut bytes.Buffer
	if err := run(ctx, args, &out, &errOut); err != nil {
		t.Fatalf("run: %v\n%s", err, errOut.String())
	}
	if !strings.Contains(out.String(), "2 compute hosts; auth enabled") {
		t.Errorf("output: got %q", out.String())
	}
	// Again, once auth is on, adding a host.
	if err := run(ctx, append(args[:len(args)-1], "cn1,cn2,cn3"), &out, &errOut); err != nil {
		t.Fatalf("second run: %v", err)
	}
	cn3 := srv.ClientAs(t, "cn3")
	if _, err := cn3.Put(ctx, registry.ComputeInstanceKey("cn3", "6f2b4c3e-8d1a-4e5f-9a7b-0c1d2e3f4a5b"), "{}"); err != nil {
		t.Errorf("cn3 claiming its instance: %v", err)
	}
	if _, err := cn3.Put(ctx, registry.ComputeInstanceKey("cn1", "6f2b4c3e-8d1a-4e5f-9a7b-0c1d2e3f4a5b"), "{}"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("cn3 claiming for cn1: got %v, want permission denied", err)
	}
	// A proxy user writes its own records only (its name is its CN).
	proxy := srv.ClientAs(t, "novnc-proxy")
	if _, err := proxy.Put(ctx, registry.ProxyKey("novnc-proxy"), "{}"); err != nil {
		t.Errorf("novnc-proxy announcing itself: %v", err)
	}
	if _, err := proxy.Put(ctx, registry.SessionKey("xvp-proxy", "s1"), "{}"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("novnc-proxy publishing xvp-proxy's session: got %v, want permission denied", err)
	}
	// Not as another user.
	notRoot := srv.ClientFiles(t, "consoleauth")
	err := run(ctx, []string{"-endpoints", srv.Endpoint, "-cacert", notRoot.CA, "-cert", notRoot.Cert, "-key", notRoot.Key, "-hosts", "cn4"}, &out, &errOut)
	if !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("run as consoleauth: got %v, want permission denied", err)
	}
}

func TestRunRefuses(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name string
		args []string
		want string
	}{
		{"no endpoints", []string{"-hosts", "h1"}, "-endpoints is required"},
		{"a host named root", []string{"-print", "-hosts", "root"}, "already the user of the administrator"},
		{"stray argument", []string{"-print", "h1"}, "unexpected arguments"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if err := run(ctx, tt.args, &out, &errOut); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestPrint(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"-print", "-hosts", "cn1"}, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if s := out.String(); !strings.Contains(s, "etcdctl role grant-permission compute-cn1 readwrite /vncgate/computes/cn1 --prefix=false\n") ||
		!strings.HasSuffix(s, "etcdctl auth enable\n") {
		t.Errorf("script: got\n%s", s)
	}
}
