package authserver

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// EtcdOutage reports whether st is the answer given while etcd is
// unavailable (UnavailableMessage), for grpcserver.Options.Quiet: the store
// logs the outage once, and a warning per refused call would drown it.
func EtcdOutage(st *status.Status) bool {
	return st.Code() == codes.Unavailable && st.Message() == UnavailableMessage
}
