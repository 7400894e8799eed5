package rfb

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/certs"
)

// vencryptClient runs the client side of RFB 3.8 and VeNCrypt X509None on
// c as QEMU's clients do and returns the TLS conn, after the SecurityResult.
func vencryptClient(t *testing.T, c net.Conn, cfg *tls.Config) (net.Conn, error) {
	t.Helper()
	var b [12]byte
	steps := []struct {
		read  []byte // expected from the server
		write []byte
	}{
		{[]byte("RFB 003.008\n"), []byte("RFB 003.008\n")},
		{[]byte{1, securityVeNCrypt}, []byte{securityVeNCrypt}},
		{[]byte{0, 2}, []byte{0, 2}},
		{[]byte{0, 1, 0, 0, 1, 4}, []byte{0, 0, 1, 4}}, // ack, [X509None]; choose it
		{[]byte{1}, nil},
	}
	for _, s := range steps {
		got := b[:len(s.read)]
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("reading % x: %v", s.read, err)
		}
		if !bytes.Equal(got, s.read) {
			t.Fatalf("got % x, want % x", got, s.read)
		}
		if _, err := c.Write(s.write); err != nil {
			t.Fatal(err)
		}
	}
	tc := tls.Client(c, cfg)
	if err := tc.Handshake(); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	if _, err := io.ReadFull(tc, b[:4]); err != nil {
		return nil, err
	}
	if r := binary.BigEndian.Uint32(b[:4]); r != 0 {
		t.Fatalf("security result %d, want 0", r)
	}
	return tc, nil
}

// clientInit sends a shared ClientInit and reads the ServerInit.
func clientInit(t *testing.T, c net.Conn) ServerInit {
	t.Helper()
	if _, err := c.Write([]byte{1}); err != nil {
		t.Fatal(err)
	}
	var b [20]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		t.Fatalf("server init: %v", err)
	}
	name, err := readString(c, maxNameLen)
	if err != nil {
		t.Fatal(err)
	}
	return ServerInit{Version: "3.8", Width: binary.BigEndian.Uint16(b[0:]), Height: binary.BigEndian.Uint16(b[2:]),
		PixelFormat: unmarshalPixelFormat(b[4:]), Name: name}
}

func TestVeNCryptServer(t *testing.T) {
	ca := certs.TestCA(t)
	serverCert, err := ca.Issue("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	clientCert, err := ca.Issue("proxy")
	if err != nil {
		t.Fatal(err)
	}
	foreignCert, _ := certs.TestCert(t, "proxy")
	serverTLS := &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: ca.Pool()}
	s, addr := startServer(t, Options{Width: 64, Height: 48, Name: "tls vm",
		VeNCrypt: &VeNCrypt{TLS: serverTLS, RequireClientCert: true}})
	client := func(certs ...tls.Certificate) *tls.Config {
		return &tls.Config{RootCAs: ca.Pool(), ServerName: "127.0.0.1", Certificates: certs}
	}

	t.Run("client certificate of the CA: a session inside TLS", func(t *testing.T) {
		tc, err := vencryptClient(t, dial(t, addr), client(clientCert))
		if err != nil {
			t.Fatalf("security result: %v", err)
		}
		si := clientInit(t, tc)
		if si.Width != 64 || si.Height != 48 || si.Name != "tls vm" {
			t.Fatalf("server init: got %+v", si)
		}
		if r := fullUpdate(t, tc, si); r.Width != 64 {
			t.Fatalf("update: got width %d, want 64", r.Width)
		}
		if err := SendKey(tc, 'v', true); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := s.WaitKey(ctx, 'v'); err != nil {
			t.Fatalf("key inside TLS: %v", err)
		}
	})

	for _, tc := range []struct {
		name  string
		certs []tls.Certificate
	}{
		{"no client certificate: closed after TLS", nil},
		{"client certificate of another CA: closed after TLS", []tls.Certificate{foreignCert}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := vencryptClient(t, dial(t, addr), client(tc.certs...))
			if !errors.Is(err, io.EOF) {
				t.Fatalf("first read inside TLS: got %v, want EOF as from QEMU", err)
			}
		})
	}

	t.Run("RFB 3.3 refused with a reason", func(t *testing.T) {
		c := dial(t, addr)
		if _, err := io.ReadFull(c, make([]byte, 12)); err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "RFB 003.003\n")
		got, _ := io.ReadAll(c)
		if want := withReason([]byte{0, 0, 0, 0}, "VeNCrypt needs RFB 3.7 or later"); !bytes.Equal(got, want) {
			t.Fatalf("got %q, want %q", got, want)
		}
	})

	t.Run("a client choosing None refused", func(t *testing.T) {
		c := dial(t, addr)
		if _, err := io.ReadFull(c, make([]byte, 12)); err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, "RFB 003.008\n")
		if _, err := io.ReadFull(c, make([]byte, 2)); err != nil { // [VeNCrypt]
			t.Fatal(err)
		}
		c.Write([]byte{securityNone})
		got, _ := io.ReadAll(c)
		if want := withReason([]byte{0, 0, 0, 1}, "only security type 19 is offered"); !bytes.Equal(got, want) {
			t.Fatalf("got %q, want %q", got, want)
		}
	})
}

func TestHandshakeAs(t *testing.T) {
	_, addr := startServer(t, Options{Width: 32, Height: 16})
	for _, v := range []string{"3.3", "3.7", "3.8"} {
		t.Run(v, func(t *testing.T) {
			c := dial(t, addr)
			si, err := HandshakeAs(c, v)
			if err != nil {
				t.Fatal(err)
			}
			if si.Version != v || si.Width != 32 {
				t.Fatalf("got %+v, want version %s", si, v)
			}
			fullUpdate(t, c, si)
		})
	}
	if _, err := HandshakeAs(&bytes.Buffer{}, "4.0"); err == nil {
		t.Fatal("HandshakeAs 4.0: got nil error")
	}
}
