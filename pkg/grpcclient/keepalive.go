package grpcclient

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
)

// Keepalive of every vncgate gRPC connection, both ends. Without it a peer
// that vanished without a FIN or RST (its host powered off, a firewall or
// NAT that forgot the flow) is noticed only when the kernel gives up on
// the TCP connection, after minutes: until then a client keeps sending
// calls into it (a pick_first child stays READY) and a server keeps the
// dead client's streams (the health Watch) open. With it, the silent peer
// is dropped about KeepaliveTime+KeepaliveTimeout after its last frame,
// and the client's calls go to the other replicas.
const (
	// KeepaliveTime: a side pings after that long without a frame from
	// the other.
	KeepaliveTime = 30 * time.Second
	// KeepaliveTimeout: a ping unanswered that long ends the connection.
	KeepaliveTimeout = 10 * time.Second
	// keepaliveMinTime is the shortest ping interval a server tolerates
	// from a client (a third below KeepaliveTime, for timer slack); more
	// frequent pings earn a GOAWAY (too_many_pings).
	keepaliveMinTime = 20 * time.Second
)

// ClientKeepalive is what Dial sets on every ClientConn. The client pings
// only while a call or stream is open (PermitWithoutStream false): an idle
// connection is not worth a packet every 30 s, and one of ours is never
// idle for long anyway (the health Watch is a stream held open).
var ClientKeepalive = keepalive.ClientParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout}

// ServerOptions are the keepalive options of every vncgate gRPC server,
// matching ClientKeepalive: the server pings a silent client on the same
// schedule (and drops a dead one's streams), and tolerates clients' pings
// down to keepaliveMinTime apart, with or without a stream open, so no
// client of ours ever gets too_many_pings.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
	}
}
