package bench

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// leanWS is a minimal WebSocket client that costs this process next to
// nothing, to tell a proxy's cost from coder/websocket's: coder/websocket
// masks each message into a 4 KiB buffer and writes it 4 KiB at a time,
// which on two cores slows the client->server direction of any proxy.
// leanWS writes each message as one frame in one vectored write, masked
// with the all-zero key (a legal key, so the proxy still unmasks every
// byte), and reads frames through a 64 KiB buffer. Control frames other
// than close are skipped: rounds are far shorter than the proxies' ping
// interval. The throughput runs use it, and the setup runs beside
// coder/websocket (a browser's handshake costs it next to nothing too).
type leanWS struct {
	net.Conn
	br      *bufio.Reader
	payload int64 // bytes left in the data frame being read
}

// leanPath reaches the stream server through a WebSocket proxy with leanWS.
func leanPath(name, wsURL, origin, subprotocol string) relayPath {
	return relayPath{name: name, dial: func(ctx context.Context) (net.Conn, error) {
		return dialLeanWS(ctx, wsURL, origin, subprotocol, 64<<10)
	}}
}

// dialLeanWS upgrades a connection to wsURL and reads frames through a
// buffer of readSize bytes.
func dialLeanWS(ctx context.Context, wsURL, origin, subprotocol string, readSize int) (*leanWS, error) {
	u, err := url.Parse(wsURL)
	if err != nil {
		return nil, err
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil, err
	}
	if deadline, ok := ctx.Deadline(); ok {
		c.SetDeadline(deadline)
	}
	var key [16]byte
	rand.Read(key[:])
	head := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: %s\r\n", u.RequestURI(), u.Host, base64.StdEncoding.EncodeToString(key[:]))
	if origin != "" {
		head += "Origin: " + origin + "\r\n"
	}
	if subprotocol != "" {
		head += "Sec-WebSocket-Protocol: " + subprotocol + "\r\n"
	}
	if _, err := io.WriteString(c, head+"\r\n"); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(c, readSize)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("upgrade: %w", err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		c.Close()
		return nil, fmt.Errorf("upgrade: %s", resp.Status)
	}
	c.SetDeadline(time.Time{})
	return &leanWS{Conn: c, br: br}, nil
}

// Write sends p as one binary frame.
func (w *leanWS) Write(p []byte) (int, error) {
	var h [14]byte
	h[0] = 0x82 // FIN, binary
	n := 2
	switch {
	case len(p) < 126:
		h[1] = 0x80 | byte(len(p))
	case len(p) <= 0xffff:
		h[1] = 0x80 | 126
		binary.BigEndian.PutUint16(h[2:], uint16(len(p)))
		n = 4
	default:
		h[1] = 0x80 | 127
		binary.BigEndian.PutUint64(h[2:], uint64(len(p)))
		n = 10
	}
	n += 4 // the masking key, all zero
	bufs := net.Buffers{h[:n], p}
	if _, err := bufs.WriteTo(w.Conn); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Read reads the payloads of data frames as one stream; a close frame is
// the end.
func (w *leanWS) Read(p []byte) (int, error) {
	for w.payload == 0 {
		var h [2]byte
		if _, err := io.ReadFull(w.br, h[:]); err != nil {
			return 0, err
		}
		if h[1]&0x80 != 0 {
			return 0, errors.New("masked frame from the server")
		}
		size := int64(h[1] & 0x7f)
		switch size {
		case 126:
			var ext [2]byte
			if _, err := io.ReadFull(w.br, ext[:]); err != nil {
				return 0, err
			}
			size = int64(binary.BigEndian.Uint16(ext[:]))
		case 127:
			var ext [8]byte
			if _, err := io.ReadFull(w.br, ext[:]); err != nil {
				return 0, err
			}
			size = int64(binary.BigEndian.Uint64(ext[:]))
		}
		switch opcode := h[0] & 0x0f; {
		case opcode == 0x8:
			return 0, io.EOF
		case opcode >= 0x8: // ping, pong
			if _, err := w.br.Discard(int(size)); err != nil {
				return 0, err
			}
		default:
			w.payload = size
		}
	}
	n, err := w.br.Read(p[:min(int64(len(p)), w.payload)])
	w.payload -= int64(n)
	return n, err
}
