//go:build unix

package backend

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"
)

// awaitGreeting waits until conn has a byte to read (or is at EOF, which
// the relay then reports), without reading it: the server's greeting stays
// in the socket for the relay and its splice. It returns ErrSilent when
// timeout passes first and ctx's error when ctx ends first.
func awaitGreeting(ctx context.Context, conn net.Conn, timeout time.Duration) error {
	var tc *net.TCPConn
	switch c := conn.(type) {
	case *bufferedConn:
		return nil // bytes came after the 200 head: the server spoke
	case *net.TCPConn:
		tc = c
	default:
		return fmt.Errorf("cannot wait for the greeting on a %T", conn)
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	ctxDeadline, ok := ctx.Deadline()
	ctxFirst := ok && ctxDeadline.Before(deadline)
	if ctxFirst {
		deadline = ctxDeadline
	}
	if err := tc.SetReadDeadline(deadline); err != nil {
		return err
	}
	// ctx may also end before its deadline (the client went away): a
	// deadline in the past wakes the poller.
	woken := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(woken)
		tc.SetReadDeadline(time.Unix(1, 0))
	})
	var peekErr error
	err = raw.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			_, _, e := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
			switch e {
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // nothing yet: wait in the runtime's poller
			}
			peekErr = e // nil: a byte, or EOF
			return true
		}
	})
	if !stop() {
		<-woken // so that clearing the deadline below is the last word
	}
	tc.SetReadDeadline(time.Time{})
	switch {
	case err == nil:
		return peekErr
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, os.ErrDeadlineExceeded) && ctxFirst:
		return context.DeadlineExceeded
	case errors.Is(err, os.ErrDeadlineExceeded):
		return ErrSilent
	}
	return err
}
