package relay

import (
	"io"
	"sync"
)

// BufferSize is the chunk a relay direction moves at once. Buffers are lent
// only while bytes flow, so the size costs an idle session nothing; large
// chunks mean fewer system calls and, for WebSocket, fewer messages (a
// 32 KiB chunk halved novnc-proxy's throughput).
const BufferSize = 256 << 10

var buffers = sync.Pool{New: func() any {
	b := make([]byte, BufferSize)
	return &b
}}

// CopyPooled copies r to w until EOF with a pooled buffer. It never uses
// io.ReaderFrom or io.WriterTo, which would allocate a buffer of their own
// and hold it while the source is idle.
func CopyPooled(w io.Writer, r io.Reader) (int64, error) {
	bp := buffers.Get().(*[]byte)
	defer buffers.Put(bp)
	buf := *bp
	var total int64
	for {
		n, err := r.Read(buf)
		if n > 0 {
			m, werr := w.Write(buf[:n])
			total += int64(m)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
