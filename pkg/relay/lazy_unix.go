//go:build unix

package relay

import (
	"io"
	"net"
	"syscall"
)

// lazyTCP is a TCP connection with a WriteTo that waits until
// bytes are waiting before it borrows a copy buffer, so an idle session holds
// no buffer on this side either (io.Copy would hold 32 KiB per direction for
// the session's whole life). Half-close comes from the embedded TCPConn.
type lazyTCP struct {
	*net.TCPConn
	raw syscall.RawConn
}

// lazy wraps a TCP connection, or a wrapper that says it is one (see
// TransparentTCP); other connections are returned as is.
func lazy(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if t, isT := c.(TransparentTCP); isT && !ok {
		tc = t.TransparentTCP()
		ok = tc != nil
	}
	if !ok {
		return c
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	return &lazyTCP{TCPConn: tc, raw: raw}
}

// WriteTo copies to w until EOF or an error.
func (c *lazyTCP) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if err := c.waitReadable(); err != nil {
			return total, err
		}
		n, err := c.drain(w)
		total += n
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// drain copies what is waiting with a pooled buffer.
func (c *lazyTCP) drain(w io.Writer) (int64, error) {
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := c.TCPConn.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err != nil {
			return total, err
		}
		if n < len(buf) {
			return total, nil // took all that was waiting
		}
	}
}

// waitReadable blocks in the runtime's poller, without a buffer, until the
// socket has data, is at EOF or failed (a one-byte MSG_PEEK tells which).
func (c *lazyTCP) waitReadable() error {
	var b [1]byte
	return c.raw.Read(func(fd uintptr) bool {
		_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return err != syscall.EAGAIN
	})
}
