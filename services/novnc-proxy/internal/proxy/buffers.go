package proxy

import "sync"

// copyBufferSize is the chunk a relay direction moves at once; a chunk from
// the VNC server becomes one WebSocket message.
const copyBufferSize = 32 << 10

// copyBuffers lends copy buffers to sessions only while bytes are moving, so
// an idle console holds none.
var copyBuffers = sync.Pool{New: func() any {
	b := make([]byte, copyBufferSize)
	return &b
}}
