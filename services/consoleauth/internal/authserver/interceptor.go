package authserver

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// LogUnary logs every unary call with its method, code and duration. REST
// calls pass through it too, since the gateway calls the gRPC server. Server
// faults log at warning level, except the answers given while etcd is
// unavailable (UnavailableMessage): the store logs the outage once, and a
// warning per refused call would drown it. Requests are not logged: they
// carry tokens.
func LogUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		st := status.Convert(err)
		level := slog.LevelInfo
		switch st.Code() {
		case codes.Internal, codes.Unknown, codes.Unavailable, codes.DataLoss, codes.DeadlineExceeded:
			level = slog.LevelWarn
		}
		if st.Code() == codes.Unavailable && st.Message() == UnavailableMessage {
			level = slog.LevelInfo
		}
		attrs := []slog.Attr{
			slog.String("method", info.FullMethod),
			slog.String("code", st.Code().String()),
			slog.Float64("duration_ms", float64(time.Since(start).Microseconds())/1000),
		}
		if err != nil {
			attrs = append(attrs, slog.String("error", st.Message()))
		}
		log.LogAttrs(ctx, level, "rpc", attrs...)
		return resp, err
	}
}
