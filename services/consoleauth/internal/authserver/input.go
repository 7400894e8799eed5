package authserver

import (
	"fmt"
	"unicode/utf8"

	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/consoleauth/internal/tokenstore"
)

// echoLen is the most of a caller's string an error message repeats.
const echoLen = 16

// quoteShort quotes at most echoLen bytes of s (never splitting a
// character), marking a cut with the full length: enough to recognise a
// mistake, never enough to carry a payload into logs or error bodies.
func quoteShort(s string) string {
	if len(s) <= echoLen {
		return fmt.Sprintf("%q", s)
	}
	cut := echoLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return fmt.Sprintf("%q… (%d bytes)", s[:cut], len(s))
}

// parseUUID checks that field's value is an instance UUID in Nova's form
// and returns its canonical (lower-case) spelling.
func parseUUID(field, raw string) (string, error) {
	if raw == "" {
		return "", detail(ErrInvalidArgument, "missing "+field)
	}
	uuid, err := registry.ParseInstanceUUID(raw)
	if err != nil {
		return "", detail(ErrInvalidArgument, fmt.Sprintf("%s must be a UUID: %v; got %s", field, err, quoteShort(raw)))
	}
	return uuid, nil
}

// checkTokenShape refuses, before any hashing or etcd call, what cannot be
// a token of this service.
func checkTokenShape(field, token string) error {
	switch {
	case token == "":
		return detail(ErrInvalidArgument, "missing "+field)
	case tokenstore.CheckToken(token) != nil:
		return detail(ErrInvalidArgument, fmt.Sprintf("%s is not a console token: want %d base64url characters", field, tokenstore.TokenLen))
	}
	return nil
}
