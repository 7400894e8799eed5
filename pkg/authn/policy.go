package authn

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Refusals, wrapped by errors saying why: ErrUnauthenticated when the
// caller did not prove who it is (gRPC UNAUTHENTICATED, HTTP 401),
// ErrPermissionDenied when its role may not do what it asked (gRPC
// PERMISSION_DENIED, HTTP 403).
var (
	ErrUnauthenticated  = errors.New("unauthenticated")
	ErrPermissionDenied = errors.New("permission denied")
)

// Policy maps a gRPC method's full name (/package.Service/Method) to the
// roles that may call it. A method not in the table is refused to every
// caller: deny by default.
type Policy map[string][]Role

// Authorize says whether id may call method; the error wraps
// ErrPermissionDenied and reads "role proxy may not call GetConsoleURL".
func (p Policy) Authorize(method string, id Identity) error {
	roles, ok := p[method]
	if ok && slices.Contains(roles, id.Role) {
		return nil
	}
	short := method[strings.LastIndexByte(method, '/')+1:]
	if !ok {
		return refuse(ErrPermissionDenied, "%s is not open to any caller", short)
	}
	return refuse(ErrPermissionDenied, "role %s may not call %s", id.Role, short)
}

// refusal is an error that errors.Is one of the refusals and reads only
// its own message, so clients see "role proxy may not call GetConsoleURL"
// rather than the sentinel's words in front.
type refusal struct {
	kind error
	msg  string
}

func (e *refusal) Error() string { return e.msg }
func (e *refusal) Unwrap() error { return e.kind }

func refuse(kind error, format string, args ...any) error {
	return &refusal{kind: kind, msg: fmt.Sprintf(format, args...)}
}
