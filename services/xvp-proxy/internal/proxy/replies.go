package proxy

import (
	"fmt"
	"net/http"
	"strings"
)

// The proxy's answers, byte for byte (testdata/replies/*.golden). Only the
// success reply is what the XVP client parses; the refusals are complete
// HTTP/1.1 responses with a one-line text body so a person with curl or
// netcat, or a client's log, can read why.
//
//	200 OK                   token valid, VNC server reached: raw RFB follows
//	400 Invalid Request      no token, malformed request, head over 4 KiB or cut short (Nova's reason phrase)
//	401 Not Authorized       unknown, expired, revoked (also during the handshake) or wrong-type token, or the console moved (Nova's reason phrase)
//	405 Method Not Allowed   a method other than CONNECT or GET
//	408 Request Timeout      no complete head within the handshake timeout
//	502 Bad Gateway          the VNC server is unreachable or refused the internal CONNECT
//	503 Service Unavailable  consoleauth cannot answer, the instance has its maximum of sessions, the proxy has
//	                         max_connections open or the client max_connections_per_client, or the proxy is shutting down
var (
	replyOK           = []byte("HTTP/1.1 200 OK\r\n\r\n")
	replyNoToken      = refusal(http.StatusBadRequest, "Invalid Request", "no token: connect with CONNECT /console?token=TOKEN HTTP/1.1")
	replyMalformed    = refusal(http.StatusBadRequest, "Invalid Request", "malformed request: want CONNECT /console?token=TOKEN HTTP/1.1")
	replyTooLong      = refusal(http.StatusBadRequest, "Invalid Request", "request head longer than 4096 bytes")
	replyIncomplete   = refusal(http.StatusBadRequest, "Invalid Request", "request head ended before its empty line")
	replyInvalidToken = refusal(http.StatusUnauthorized, "Not Authorized", "console token invalid or expired")
	replyMoved        = refusal(http.StatusUnauthorized, "Not Authorized", "console moved: request a new console URL")
	replyMethod       = refusal(http.StatusMethodNotAllowed, "Method Not Allowed", "method not allowed: use CONNECT", "Allow: CONNECT, GET")
	replyTimeout      = refusal(http.StatusRequestTimeout, "Request Timeout", "request head not received in time")
	replyBadGateway   = refusal(http.StatusBadGateway, "Bad Gateway", "console server unreachable")
	replyUnavailable  = refusal(http.StatusServiceUnavailable, "Service Unavailable", "console service unavailable: retry later")
	replyTooMany      = refusal(http.StatusServiceUnavailable, "Service Unavailable", "too many console sessions for this instance")
	replyShuttingDown = refusal(http.StatusServiceUnavailable, "Service Unavailable", "proxy shutting down: reconnect")
	replyTooManyConns = refusal(http.StatusServiceUnavailable, "Service Unavailable", "too many connections: retry later", "Retry-After: 1")
	replyTooManyFrom  = refusal(http.StatusServiceUnavailable, "Service Unavailable", "too many connections from this address: retry later", "Retry-After: 1")
)

// refusal builds a complete response with a text body and no keep-alive.
func refusal(code int, reason, body string, headers ...string) []byte {
	var b strings.Builder
	body += "\n"
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\n", code, reason)
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	fmt.Fprintf(&b, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(body), body)
	return []byte(b.String())
}
