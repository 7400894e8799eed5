package rfbproxy

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vncgate/vncgate/testkit/loopback"
)

// Client messages as RFB and its extensions lay them out (and as noVNC's
// core/rfb.js RFB.messages writes them).

func setPixelFormat() []byte {
	return []byte{0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 0, 8, 16, 0, 0, 0}
}

func setEncodings(encs ...int32) []byte {
	b := []byte{2, 0}
	b = binary.BigEndian.AppendUint16(b, uint16(len(encs)))
	for _, e := range encs {
		b = binary.BigEndian.AppendUint32(b, uint32(e))
	}
	return b
}

func updateRequest(incremental bool) []byte {
	inc := byte(0)
	if incremental {
		inc = 1
	}
	return []byte{3, inc, 0, 0, 0, 0, 0x03, 0x20, 0x02, 0x58}
}

func keyEvent(down bool, keysym uint32) []byte {
	d := byte(0)
	if down {
		d = 1
	}
	return binary.BigEndian.AppendUint32([]byte{4, d, 0, 0}, keysym)
}

func pointerEvent(mask byte, x, y uint16) []byte {
	b := binary.BigEndian.AppendUint16([]byte{5, mask}, x)
	return binary.BigEndian.AppendUint16(b, y)
}

// extendedPointerEvent is noVNC's extendedPointerEvent: the marker bit set
// and a seventh byte with the higher buttons.
func extendedPointerEvent(mask uint16, x, y uint16) []byte {
	return append(pointerEvent(byte(mask&0x7f)|0x80, x, y), byte(mask>>7))
}

func cutText(text string) []byte {
	b := binary.BigEndian.AppendUint32([]byte{6, 0, 0, 0}, uint32(len(text)))
	return append(b, text...)
}

// extendedCutText is the extended clipboard's form: a negative length.
func extendedCutText(payload []byte) []byte {
	b := binary.BigEndian.AppendUint32([]byte{6, 0, 0, 0}, uint32(-int32(len(payload))))
	return append(b, payload...)
}

func continuousUpdates(enable bool) []byte {
	e := byte(0)
	if enable {
		e = 1
	}
	return []byte{150, e, 0, 0, 0, 0, 0x03, 0x20, 0x02, 0x58}
}

func fence(flags uint32, payload []byte) []byte {
	b := binary.BigEndian.AppendUint32([]byte{248, 0, 0, 0}, flags)
	return append(append(b, byte(len(payload))), payload...)
}

func qemuKeyEvent(down bool, keysym, keycode uint32) []byte {
	d := byte(0)
	if down {
		d = 1
	}
	b := binary.BigEndian.AppendUint32([]byte{255, 0, 0, d}, keysym)
	return binary.BigEndian.AppendUint32(b, keycode)
}

func qemuAudioMessage(op uint16) []byte {
	b := binary.BigEndian.AppendUint16([]byte{255, 1}, op)
	if op == qemuAudioSetFormat {
		b = append(b, 3, 2) // S16, stereo
		b = binary.BigEndian.AppendUint32(b, 44100)
	}
	return b
}

func xvpOp(op byte) []byte { return []byte{250, 0, 1, op} }

func setDesktopSize(screens int) []byte {
	b := []byte{251, 0, 0x04, 0x00, 0x03, 0x00, byte(screens), 0}
	for i := range screens {
		b = binary.BigEndian.AppendUint32(b, uint32(i))
		b = append(b, 0, 0, 0, 0, 0x04, 0x00, 0x03, 0x00, 0, 0, 0, 0)
	}
	return b
}

func gii(bigEndian bool, subtype byte, payload []byte) []byte {
	b := []byte{253, subtype}
	if bigEndian {
		b[1] |= 0x80
		b = binary.BigEndian.AppendUint16(b, uint16(len(payload)))
	} else {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(payload)))
	}
	return append(b, payload...)
}

// noVNCEncodings is the list noVNC 1.7 sends at depth 24.
var noVNCEncodings = []int32{1, 7, -260, 16, 21, 5, 2, 6, 0, -26, -254, -223, -224, -258, -261, -308, -309, -312, -313, -307,
	-1063131698, encodingExtendedMouseButtons, 0x574d5664, -239}

// streamConn is a client whose reads return stream in chunks of the sizes
// chunk gives, then end with end (io.EOF when nil). Writes are kept.
type streamConn struct {
	stream []byte
	chunk  func(i int) int
	reads  int
	end    error
	wrote  bytes.Buffer
}

func newStreamConn(stream []byte, chunk func(int) int) *streamConn {
	if chunk == nil {
		chunk = func(int) int { return 1 << 20 }
	}
	return &streamConn{stream: stream, chunk: chunk}
}

func (c *streamConn) Read(p []byte) (int, error) {
	if len(c.stream) == 0 {
		if c.end != nil {
			return 0, c.end
		}
		return 0, io.EOF
	}
	n := min(len(p), len(c.stream), max(c.chunk(c.reads), 1))
	c.reads++
	copy(p, c.stream[:n])
	c.stream = c.stream[n:]
	return n, nil
}

func (c *streamConn) Write(p []byte) (int, error)      { return c.wrote.Write(p) }
func (c *streamConn) Close() error                     { return nil }
func (c *streamConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *streamConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *streamConn) SetDeadline(time.Time) error      { return nil }
func (c *streamConn) SetReadDeadline(time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(time.Time) error { return nil }

// writes records every Write separately.
type writes struct {
	mu   sync.Mutex
	msgs [][]byte
}

func (w *writes) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, bytes.Clone(p))
	return len(p), nil
}

func (w *writes) got() [][]byte {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.msgs)
}

// filter runs stream through ViewOnly's WriteTo and returns each Write.
func filter(t testing.TB, stream []byte, chunk func(int) int) ([][]byte, error) {
	t.Helper()
	var w writes
	n, err := ViewOnly(newStreamConn(stream, chunk)).(io.WriterTo).WriteTo(&w)
	got := w.got()
	if sum := int64(len(bytes.Join(got, nil))); n != sum {
		t.Errorf("WriteTo returned %d, wrote %d bytes", n, sum)
	}
	return got, err
}

func cat(msgs ...[]byte) []byte { return bytes.Join(msgs, nil) }

func TestViewOnlyForwardsWhatOnlyViews(t *testing.T) {
	want := [][]byte{
		{1}, // ClientInit, shared
		setPixelFormat(),
		setEncodings(noVNCEncodings...),
		updateRequest(false),
		continuousUpdates(true),
		fence(0x80000003, []byte("sync")),
		fence(0, make([]byte, maxFence)),
		updateRequest(true),
		qemuAudioMessage(qemuAudioSetFormat),
		qemuAudioMessage(qemuAudioEnable),
		qemuAudioMessage(qemuAudioDisable),
		setEncodings(),
		setEncodings(make([]int32, maxEncodings)...),
		updateRequest(true),
	}
	for _, tc := range []struct {
		name  string
		chunk func(int) int
	}{
		{"all at once", nil},
		{"one byte per read", func(int) int { return 1 }},
		{"odd chunks", func(i int) int { return 1 + i*7%13 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := filter(t, cat(want...), tc.chunk)
			if err != nil {
				t.Fatalf("got error %v, want nil at the end of the stream", err)
			}
			if !slices.EqualFunc(got, want, bytes.Equal) {
				t.Fatalf("got writes\n%v\nwant each message as one write\n%v", got, want)
			}
		})
	}
}

func TestViewOnlyDropsInputWhole(t *testing.T) {
	between := updateRequest(true)
	tests := []struct {
		name     string
		encoding bool // after a SetEncodings announcing extended mouse buttons
		msg      []byte
	}{
		{name: "KeyEvent", msg: keyEvent(true, 'a')},
		{name: "KeyEvent Delete release", msg: keyEvent(false, 0xffff)},
		{name: "PointerEvent", msg: pointerEvent(1, 100, 200)},
		{name: "PointerEvent of button 8", msg: pointerEvent(0x80, 1, 2)},
		{name: "extended PointerEvent", encoding: true, msg: extendedPointerEvent(0x100, 100, 200)},
		{name: "PointerEvent with extended buttons announced", encoding: true, msg: pointerEvent(0x04, 3, 4)},
		{name: "ClientCutText", msg: cutText("rm -rf /")},
		{name: "ClientCutText empty", msg: cutText("")},
		{name: "ClientCutText at the limit", msg: cutText(strings.Repeat("x", maxCutText))},
		{name: "extended clipboard caps", msg: extendedCutText([]byte{0x1f, 0, 0, 1, 0, 0, 0x10, 0})},
		{name: "extended clipboard provide", msg: extendedCutText(append([]byte{0x10, 0, 0, 1}, bytes.Repeat([]byte{0x78}, 300)...))},
		{name: "QEMU extended KeyEvent", msg: qemuKeyEvent(true, 'a', 0x1e)},
		{name: "xvp reboot", msg: xvpOp(3)},
		{name: "SetDesktopSize", msg: setDesktopSize(1)},
		{name: "SetDesktopSize of 255 screens", msg: setDesktopSize(255)},
		{name: "gii little-endian injection", msg: gii(false, 0, make([]byte, 24))},
		{name: "gii big-endian version", msg: gii(true, 1, []byte{0, 1})},
		{name: "gii big-endian device creation", msg: gii(true, 2, make([]byte, 300))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stream := [][]byte{{1}}
			want := [][]byte{{1}}
			if tt.encoding {
				enc := setEncodings(0, encodingExtendedMouseButtons)
				stream, want = append(stream, enc), append(want, enc)
			}
			stream = append(stream, between, tt.msg, tt.msg, between, tt.msg)
			want = append(want, between, between)
			for _, chunk := range []func(int) int{nil, func(int) int { return 1 }, func(i int) int { return 1 + i*5%11 }} {
				got, err := filter(t, cat(stream...), chunk)
				if err != nil {
					t.Fatalf("got error %v, want nil", err)
				}
				if !slices.EqualFunc(got, want, bytes.Equal) {
					t.Fatalf("got writes %v, want %v", got, want)
				}
			}
		})
	}
}

func TestViewOnlyEndsOnWhatItCannotSize(t *testing.T) {
	lead := cat([]byte{1}, updateRequest(false))
	tests := []struct {
		name    string
		msg     []byte
		wantErr error
		wantMsg string
	}{
		{"type 1 (FixColourMapEntries, obsolete)", []byte{1, 0, 0, 0, 0, 0}, ErrUnknownMessage, "type 1"},
		{"type 7 (UltraVNC file transfer)", []byte{7, 0, 0, 0}, ErrUnknownMessage, "type 7"},
		{"type 127", []byte{127}, ErrUnknownMessage, "type 127"},
		{"type 252", []byte{252, 0, 0, 0}, ErrUnknownMessage, "type 252"},
		{"QEMU subtype 2", []byte{255, 2, 0, 0}, ErrUnknownMessage, "type 255 (QEMU) subtype 2"},
		{"QEMU audio operation 3", []byte{255, 1, 0, 3}, ErrUnknownMessage, "type 255 (QEMU) audio operation 3"},
		{"too many encodings", setEncodings(make([]int32, maxEncodings+1)...), ErrMessageTooLarge, "1025 encodings"},
		{"Fence over 64 bytes", fence(0, make([]byte, maxFence+1)), ErrMessageTooLarge, "65 bytes"},
		{"cut text over 1 MiB", cutText(strings.Repeat("x", maxCutText+1)), ErrMessageTooLarge, "1048577 bytes"},
		{"extended cut text of -2^31", []byte{6, 0, 0, 0, 0x80, 0, 0, 0}, ErrMessageTooLarge, "2147483648 bytes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The messages after the bad one are never looked at.
			v := ViewOnly(newStreamConn(cat(lead, tt.msg, updateRequest(true)), nil))
			var w writes
			_, err := v.(io.WriterTo).WriteTo(&w)
			if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("got error %v, want one wrapping %v saying %q", err, tt.wantErr, tt.wantMsg)
			}
			if got, want := w.got(), [][]byte{{1}, updateRequest(false)}; !slices.EqualFunc(got, want, bytes.Equal) {
				t.Errorf("got writes %v, want those before the bad message %v", got, want)
			}
			// The error stays: nothing more is read.
			if _, err2 := v.Read(make([]byte, 64)); !errors.Is(err2, tt.wantErr) {
				t.Errorf("read after the error: got %v, want %v again", err2, tt.wantErr)
			}
		})
	}
}

func TestViewOnlyEndOfStream(t *testing.T) {
	tests := []struct {
		name    string
		stream  []byte
		want    [][]byte
		wantErr error
	}{
		{"nothing", nil, nil, nil},
		{"ClientInit only", []byte{0}, [][]byte{{0}}, nil},
		{"at a boundary", cat([]byte{1}, updateRequest(false), keyEvent(true, 'a')), [][]byte{{1}, updateRequest(false)}, nil},
		{"inside a forwarded message", cat([]byte{1}, updateRequest(false)[:7]), [][]byte{{1}}, io.ErrUnexpectedEOF},
		{"inside a forwarded header", cat([]byte{1}, setEncodings(1, 2)[:3]), [][]byte{{1}}, io.ErrUnexpectedEOF},
		{"inside a dropped message", cat([]byte{1}, keyEvent(true, 'a')[:5]), [][]byte{{1}}, io.ErrUnexpectedEOF},
		{"inside discarded cut text", cat([]byte{1}, cutText(strings.Repeat("x", 1000))[:500]), [][]byte{{1}}, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := filter(t, tt.stream, nil)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && err != nil) {
				t.Errorf("got error %v, want %v", err, tt.wantErr)
			}
			if !slices.EqualFunc(got, tt.want, bytes.Equal) {
				t.Errorf("got writes %v, want %v", got, tt.want)
			}
		})
	}
}

// TestViewOnlyReadWithSmallBuffers: Read gives the same bytes as WriteTo,
// whatever the buffer, and writes reach the client unchanged.
func TestViewOnlyReadWithSmallBuffers(t *testing.T) {
	stream := cat([]byte{1}, setPixelFormat(), keyEvent(true, 'q'), setEncodings(noVNCEncodings...), pointerEvent(1, 2, 3),
		updateRequest(false), cutText("secret"), fence(1, []byte("abc")))
	want := cat([]byte{1}, setPixelFormat(), setEncodings(noVNCEncodings...), updateRequest(false), fence(1, []byte("abc")))
	for _, size := range []int{1, 3, 7, 20, 4096} {
		conn := newStreamConn(stream, func(i int) int { return 1 + i%4 })
		v := ViewOnly(conn)
		var got []byte
		buf := make([]byte, size)
		for {
			n, err := v.Read(buf)
			got = append(got, buf[:n]...)
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatalf("buffer of %d: %v", size, err)
			}
		}
		if !bytes.Equal(got, want) {
			t.Errorf("buffer of %d: got %x, want %x", size, got, want)
		}
		if _, err := v.Write([]byte("server bytes")); err != nil || conn.wrote.String() != "server bytes" {
			t.Errorf("write: got %q (%v), want it passed through", conn.wrote.String(), err)
		}
	}
	// A Read that took part of a message, then WriteTo: nothing lost.
	v := ViewOnly(newStreamConn(cat([]byte{1}, updateRequest(false), updateRequest(true)), nil))
	one := make([]byte, 1)
	var got []byte
	for range 4 {
		if _, err := v.Read(one); err != nil {
			t.Fatal(err)
		}
		got = append(got, one...)
	}
	var w writes
	if _, err := v.(io.WriterTo).WriteTo(&w); err != nil {
		t.Fatal(err)
	}
	if got = append(got, bytes.Join(w.got(), nil)...); !bytes.Equal(got, cat([]byte{1}, updateRequest(false), updateRequest(true))) {
		t.Errorf("Read then WriteTo: got %x", got)
	}
}

// stepConn hands the filter one byte per Read, and only when the test
// says: each Read first reports that the filter wants more, so the test
// knows it has done all it will do with the bytes so far.
type stepConn struct {
	streamConn
	wants chan struct{}
	feed  chan []byte
}

func (c *stepConn) Read(p []byte) (int, error) {
	c.wants <- struct{}{}
	b, ok := <-c.feed
	if !ok {
		return 0, io.EOF
	}
	return copy(p, b), nil
}

// TestViewOnlyNeverForwardsPartialMessages feeds a session byte by byte
// and checks, each time the filter waits for more, that it has forwarded
// exactly the whole messages received so far that a view-only client may
// send: nothing of a message before its last byte, nothing of a dropped one.
func TestViewOnlyNeverForwardsPartialMessages(t *testing.T) {
	msgs := [][]byte{
		{1}, setPixelFormat(), setEncodings(noVNCEncodings...), updateRequest(false), keyEvent(true, 'a'),
		continuousUpdates(true), extendedPointerEvent(1, 10, 10), fence(3, []byte("f")), cutText("abc"),
		qemuKeyEvent(true, 'b', 0x30), updateRequest(true), extendedCutText([]byte{1, 0, 0, 0}), setDesktopSize(2),
		qemuAudioMessage(qemuAudioEnable), xvpOp(2), gii(false, 0, []byte{1, 2, 3}), updateRequest(true),
	}
	stream := cat(msgs...)
	boundaries := map[int]bool{}
	for i := range msgs {
		boundaries[len(cat(msgs[:i+1]...))] = true
	}
	c := &stepConn{wants: make(chan struct{}), feed: make(chan []byte)}
	v := ViewOnly(c)
	var w writes
	done := make(chan error, 1)
	go func() {
		_, err := v.(io.WriterTo).WriteTo(&w)
		done <- err
	}()
	for i := 0; i <= len(stream); i++ {
		<-c.wants // the filter has done all it can with stream[:i]
		want, _ := reference(stream[:i])
		if got := w.got(); !slices.EqualFunc(got, want, bytes.Equal) {
			t.Fatalf("after %d bytes: got writes %v, want %v", i, got, want)
		}
		if boundaries[i] && cap(v.(*viewOnly).msg) > smallMessage {
			t.Fatalf("after %d bytes, between messages: the filter holds a buffer of %d bytes", i, cap(v.(*viewOnly).msg))
		}
		if i < len(stream) {
			c.feed <- stream[i : i+1]
		}
	}
	close(c.feed)
	if err := <-done; err != nil {
		t.Fatalf("WriteTo: %v", err)
	}
}

// TestViewOnlySteadyStateAllocatesNothing: forwarding update requests and
// dropping input costs no allocation per message.
func TestViewOnlySteadyStateAllocatesNothing(t *testing.T) {
	round := cat(updateRequest(true), keyEvent(true, 'a'), pointerEvent(0, 5, 5), cutText("xy"))
	stream := cat([]byte{1}, bytes.Repeat(round, 1000))
	v := ViewOnly(newStreamConn(stream, nil)).(*viewOnly)
	if _, err := v.next(); err != nil { // the ClientInit
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(500, func() {
		if msg, err := v.next(); err != nil || msg[0] != msgFramebufferUpdateRequest {
			panic(fmt.Sprintf("got %v, %v", msg, err))
		}
	})
	if allocs != 0 {
		t.Errorf("got %.1f allocations per forwarded message, want 0", allocs)
	}
}

// TestViewOnlyHalfClose: CloseRead and CloseWrite reach a TCP client, so
// the relay can half-close a view-only session as any other.
func TestViewOnlyHalfClose(t *testing.T) {
	client, server := loopback.Pair(t)
	v := ViewOnly(server)
	if err := v.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatalf("CloseWrite: %v", err)
	}
	if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Errorf("client read after CloseWrite: got %d, %v, want EOF", n, err)
	}
	if err := v.(interface{ CloseRead() error }).CloseRead(); err != nil {
		t.Errorf("CloseRead: %v", err)
	}
	noHalf := ViewOnly(newStreamConn(nil, nil))
	if err := noHalf.(interface{ CloseWrite() error }).CloseWrite(); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("CloseWrite of a conn without it: got %v, want ErrUnsupported", err)
	}
}

// reference is what ViewOnly must do, written as a plain walk over a whole
// stream: the messages it forwards, in order, and how the stream ends (nil
// at a message boundary, io.ErrUnexpectedEOF inside a message, or an error
// wrapping ErrUnknownMessage or ErrMessageTooLarge).
func reference(stream []byte) ([][]byte, error) {
	if len(stream) == 0 {
		return nil, nil
	}
	out := [][]byte{stream[:1]}
	rest := stream[1:]
	extended := false
	for len(rest) > 0 {
		size, forward, err := referenceSize(rest, extended)
		if err != nil {
			return out, err
		}
		if size > len(rest) {
			return out, io.ErrUnexpectedEOF
		}
		msg := rest[:size]
		rest = rest[size:]
		if !forward {
			continue
		}
		out = append(out, msg)
		if msg[0] == msgSetEncodings {
			extended = false
			for i := 4; i < len(msg); i += 4 {
				extended = extended || int32(binary.BigEndian.Uint32(msg[i:])) == encodingExtendedMouseButtons
			}
		}
	}
	return out, nil
}

// referenceSize sizes the message at the start of b.
func referenceSize(b []byte, extended bool) (int, bool, error) {
	fixed := map[byte]struct {
		size    int
		forward bool
	}{0: {20, true}, 3: {10, true}, 4: {8, false}, 150: {10, true}, 250: {4, false}}
	if f, ok := fixed[b[0]]; ok {
		return f.size, f.forward, nil
	}
	header := map[byte]int{2: 4, 5: 1, 6: 8, 248: 9, 251: 8, 253: 4, 255: 2}
	h, ok := header[b[0]]
	if !ok {
		return 0, false, ErrUnknownMessage
	}
	if b[0] == 5 && extended {
		h = 2
	}
	if b[0] == 255 && len(b) >= 2 && b[1] == 1 {
		h = 4
	}
	if len(b) < h {
		return 0, false, io.ErrUnexpectedEOF
	}
	switch b[0] {
	case 2:
		n := int(b[2])<<8 | int(b[3])
		if n > 1024 {
			return 0, false, ErrMessageTooLarge
		}
		return 4 + 4*n, true, nil
	case 5:
		if extended && b[1] >= 0x80 {
			return 7, false, nil
		}
		return 6, false, nil
	case 6:
		n := int64(int32(uint32(b[4])<<24 | uint32(b[5])<<16 | uint32(b[6])<<8 | uint32(b[7])))
		if n < 0 {
			n = -n
		}
		if n > 1<<20 {
			return 0, false, ErrMessageTooLarge
		}
		return 8 + int(n), false, nil
	case 248:
		if b[8] > 64 {
			return 0, false, ErrMessageTooLarge
		}
		return 9 + int(b[8]), true, nil
	case 251:
		return 8 + 16*int(b[6]), false, nil
	case 253:
		if b[1]&0x80 != 0 {
			return 4 + (int(b[2])<<8 | int(b[3])), false, nil
		}
		return 4 + (int(b[3])<<8 | int(b[2])), false, nil
	default: // 255
		switch {
		case b[1] == 0:
			return 12, false, nil
		case b[1] == 1 && b[2] == 0 && b[3] <= 1:
			return 4, true, nil
		case b[1] == 1 && b[2] == 0 && b[3] == 2:
			return 10, true, nil
		}
		return 0, false, ErrUnknownMessage
	}
}

// forwardable says whether a view-only session may forward msg, by its
// type alone: the promise checked whatever the framing.
func forwardable(msg []byte) bool {
	switch msg[0] {
	case msgSetPixelFormat, msgSetEncodings, msgFramebufferUpdateRequest, msgEnableContinuousUpdates, msgFence:
		return true
	case msgQEMU:
		return len(msg) >= 2 && msg[1] == qemuAudio
	}
	return false
}

// FuzzViewOnly runs any client byte stream, read in chunks of varied
// sizes, through the filter: what it forwards is the ClientInit and then a
// sequence of whole messages a view-only session may send (never a
// KeyEvent, PointerEvent, ClientCutText or other input), each one Write,
// exactly as the reference says; Read with a small buffer gives the same
// bytes; the stream ends as the reference says.
func FuzzViewOnly(f *testing.F) {
	f.Add(cat([]byte{1}, setPixelFormat(), setEncodings(noVNCEncodings...), updateRequest(false), keyEvent(true, 'a'),
		extendedPointerEvent(1, 2, 3), cutText("x"), updateRequest(true)), uint8(0))
	f.Add(cat([]byte{0}, fence(1, []byte("ab")), qemuKeyEvent(true, 1, 2), qemuAudioMessage(2), gii(true, 0, []byte{9})), uint8(3))
	f.Fuzz(func(t *testing.T, stream []byte, chunk uint8) {
		sizes := func(i int) int { return 1 + (int(chunk)+i*int(chunk|1))%(int(chunk)+1) }
		got, err := filter(t, stream, sizes)
		want, wantErr := reference(stream)
		for i, msg := range got {
			if i > 0 && !forwardable(msg) {
				t.Fatalf("forwarded message %d, type %d, %x: a view-only session must not", i, msg[0], msg)
			}
		}
		if !slices.EqualFunc(got, want, bytes.Equal) {
			t.Fatalf("got writes\n%x\nwant\n%x", got, want)
		}
		switch {
		case wantErr == nil && err != nil,
			wantErr != nil && !errors.Is(err, wantErr):
			t.Fatalf("got error %v, want %v", err, wantErr)
		}

		// Read with a small buffer: the same bytes, the same end.
		v := ViewOnly(newStreamConn(stream, sizes))
		var read []byte
		buf := make([]byte, 1+int(chunk)%9)
		for {
			n, rerr := v.Read(buf)
			read = append(read, buf[:n]...)
			if rerr != nil {
				if rerr == io.EOF {
					rerr = nil
				}
				if (wantErr == nil) != (rerr == nil) || (wantErr != nil && !errors.Is(rerr, wantErr)) {
					t.Fatalf("Read: got error %v, want %v", rerr, wantErr)
				}
				break
			}
		}
		if wantBytes := bytes.Join(want, nil); !bytes.Equal(read, wantBytes) {
			t.Fatalf("Read: got %x, want %x", read, wantBytes)
		}
	})
}
