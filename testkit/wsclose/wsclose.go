// Package wsclose reads the close frame that ends a WebSocket, for tests of
// servers that end sessions with a close code (novnc-proxy): Read returns
// the code and reason the server sent, and fails the test when the
// connection ended without a close frame (an abrupt end, code 1006 in a
// browser) or none came within 10 s.
package wsclose

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Read reads and discards messages from c until it fails, and returns the
// close frame that ended it. Call it from the test's goroutine: it calls
// t.Fatal.
func Read(t testing.TB, c *websocket.Conn) websocket.CloseError {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		_, _, err := c.Read(ctx)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) {
			t.Fatalf("connection ended without a close frame: %v", err)
		}
		return ce
	}
}
