package rfbproxy

// The view-only filter: a parser of the client-to-server half of RFB (RFC
// 6143 7.5 and the extensions of the community protocol document that noVNC
// and QEMU speak) that forwards what only asks to see and drops the rest.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

// ErrMessageTooLarge ends a view-only session whose client sent a message
// over ViewOnly's limits: more than 1024 encodings in SetEncodings, a Fence
// payload over 64 bytes (the extension's own limit), or clipboard text over
// 1 MiB (QEMU's limit).
var ErrMessageTooLarge = errors.New("RFB client message too large for a view-only session")

// Limits of the messages a view-only client may send.
const (
	maxEncodings = 1024    // SetEncodings: noVNC sends about 30
	maxFence     = 64      // Fence payload, as the Fence extension says
	maxCutText   = 1 << 20 // ClientCutText, either form (discarded as it streams)
)

// Client-to-server message types.
const (
	msgSetPixelFormat           = 0
	msgSetEncodings             = 2
	msgFramebufferUpdateRequest = 3
	msgKeyEvent                 = 4
	msgPointerEvent             = 5
	msgClientCutText            = 6
	msgEnableContinuousUpdates  = 150
	msgFence                    = 248
	msgXVP                      = 250 // shutdown, reboot, reset: the VM's power
	msgSetDesktopSize           = 251 // resizes the VM's screen
	msgGII                      = 253 // General Input Interface: input devices and events
	msgQEMU                     = 255 // QEMU's, with a submessage type
)

// QEMU client submessages (msgQEMU) and the audio operations.
const (
	qemuExtendedKeyEvent = 0
	qemuAudio            = 1

	qemuAudioEnable    = 0
	qemuAudioDisable   = 1
	qemuAudioSetFormat = 2
)

// encodingExtendedMouseButtons is the pseudo-encoding after which a
// PointerEvent whose button mask has its top bit set carries one byte more.
const encodingExtendedMouseButtons = -316

// smallMessage is the buffer every session keeps: room for any forwarded
// message but a SetEncodings of more than 18 encodings, which gets a buffer
// of its own for as long as it is read.
const smallMessage = 9 + maxFence + 3

// ViewOnly wraps the client side of a session past the handshake: reads
// return its ClientInit and then only the messages a view-only session may
// send; KeyEvent, PointerEvent and ClientCutText are dropped whole, never
// in part; a message type it cannot size ends the stream with an error
// wrapping ErrUnknownMessage. Writes pass through.
//
// In detail, after the one-byte ClientInit:
//   - forwarded byte for byte, each only once it has been read whole:
//     SetPixelFormat, SetEncodings, FramebufferUpdateRequest,
//     EnableContinuousUpdates, Fence, and QEMU's audio messages (255/1);
//   - dropped whole: KeyEvent, PointerEvent (7 bytes with the extended mouse
//     buttons extension, which the client's SetEncodings announces),
//     ClientCutText in both forms, QEMU's extended KeyEvent (255/0), xvp
//     (power operations), SetDesktopSize and gii;
//   - anything else ends the stream with an error wrapping ErrUnknownMessage
//     that names the type, and a message over the limits with one wrapping
//     ErrMessageTooLarge; the whole messages before it are delivered first.
//
// Whatever the client sends, the server receives whole messages as this
// filter frames them, so it frames them the same way: a client cannot make
// bytes it sent inside a dropped message reach the server as input.
//
// Reading takes exactly the bytes of one message at a time from client, so
// an idle session holds no buffer beyond about 80 bytes, and the
// connection implements io.WriterTo (the relay's path: one Write per
// forwarded message) as well as Read. Read and WriteTo must not be called
// concurrently. The end of the client's stream inside a message is
// io.ErrUnexpectedEOF. CloseRead and CloseWrite reach client's own when it
// has them.
func ViewOnly(client net.Conn) net.Conn {
	v := &viewOnly{Conn: client}
	v.msg = v.small[:0]
	return v
}

// viewOnly is the connection ViewOnly returns. Its state survives a failed
// read of client (a deadline), so a later read goes on where it stopped.
type viewOnly struct {
	net.Conn

	initDone bool   // the ClientInit was read
	extended bool   // the latest SetEncodings announced extended mouse buttons
	msg      []byte // the message being read: small[:n], or its own buffer
	complete bool   // msg is a whole message next returned; reset it first
	skip     int64  // bytes of a dropped message still to discard
	out      []byte // what Read has not yet returned of a forwarded message
	err      error  // the filter's own error, returned from then on
	small    [smallMessage]byte
}

// Read returns forwarded bytes: at most one message per call.
func (v *viewOnly) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if len(v.out) == 0 {
		msg, err := v.next()
		if err != nil {
			return 0, err
		}
		v.out = msg
	}
	n := copy(p, v.out)
	v.out = v.out[n:]
	return n, nil
}

// WriteTo writes each forwarded message to w with one Write until the
// client's stream ends (nil at a message boundary) or an error.
func (v *viewOnly) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if len(v.out) > 0 { // left by an earlier Read
		n, err := w.Write(v.out)
		total += int64(n)
		v.out = v.out[n:]
		if err != nil {
			return total, err
		}
	}
	for {
		msg, err := v.next()
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		n, err := w.Write(msg)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
}

// CloseRead half-closes client when it can.
func (v *viewOnly) CloseRead() error {
	if c, ok := v.Conn.(interface{ CloseRead() error }); ok {
		return c.CloseRead()
	}
	return errors.ErrUnsupported
}

// CloseWrite half-closes client when it can.
func (v *viewOnly) CloseWrite() error {
	if c, ok := v.Conn.(interface{ CloseWrite() error }); ok {
		return c.CloseWrite()
	}
	return errors.ErrUnsupported
}

// next returns the next whole message to forward, valid until the next
// call, reading and dropping the messages before it.
func (v *viewOnly) next() ([]byte, error) {
	if v.err != nil {
		return nil, v.err
	}
	if v.complete {
		v.msg, v.complete = v.small[:0], false // a large buffer is let go
	}
	for {
		if v.skip > 0 {
			n, err := io.CopyN(io.Discard, v.Conn, v.skip)
			v.skip -= n
			if err != nil {
				return nil, unexpected(err)
			}
			continue
		}
		if !v.initDone {
			if err := v.fill(1); err != nil {
				return nil, err
			}
			v.initDone, v.complete = true, true
			return v.msg, nil
		}
		size, forward, err := v.frame()
		if err != nil {
			if errors.Is(err, ErrUnknownMessage) || errors.Is(err, ErrMessageTooLarge) {
				v.err = err
			}
			return nil, err
		}
		if !forward && size > len(v.small) {
			v.skip = int64(size - len(v.msg))
			v.msg = v.small[:0]
			continue
		}
		if err := v.fill(size); err != nil {
			return nil, err
		}
		if !forward {
			v.msg = v.msg[:0]
			continue
		}
		if v.msg[0] == msgSetEncodings {
			v.extended = announces(v.msg[4:], encodingExtendedMouseButtons)
		}
		v.complete = true
		return v.msg, nil
	}
}

// frame reads as much of the message as sizes it and returns its whole
// size and whether it is forwarded.
func (v *viewOnly) frame() (size int, forward bool, err error) {
	if err := v.fill(1); err != nil {
		return 0, false, err
	}
	switch t := v.msg[0]; t {
	case msgSetPixelFormat:
		return 20, true, nil
	case msgSetEncodings:
		if err := v.fill(4); err != nil {
			return 0, false, err
		}
		n := int(binary.BigEndian.Uint16(v.msg[2:4]))
		if n > maxEncodings {
			return 0, false, fmt.Errorf("%w: SetEncodings with %d encodings (limit %d)", ErrMessageTooLarge, n, maxEncodings)
		}
		return 4 + 4*n, true, nil
	case msgFramebufferUpdateRequest:
		return 10, true, nil
	case msgKeyEvent:
		return 8, false, nil
	case msgPointerEvent:
		if !v.extended {
			return 6, false, nil
		}
		if err := v.fill(2); err != nil {
			return 0, false, err
		}
		if v.msg[1]&0x80 != 0 { // the marker bit: one more byte of buttons
			return 7, false, nil
		}
		return 6, false, nil
	case msgClientCutText:
		if err := v.fill(8); err != nil {
			return 0, false, err
		}
		n := int64(int32(binary.BigEndian.Uint32(v.msg[4:8])))
		if n < 0 { // the extended clipboard's form
			n = -n
		}
		if n > maxCutText {
			return 0, false, fmt.Errorf("%w: ClientCutText of %d bytes (limit %d)", ErrMessageTooLarge, n, maxCutText)
		}
		return 8 + int(n), false, nil
	case msgEnableContinuousUpdates:
		return 10, true, nil
	case msgFence:
		if err := v.fill(9); err != nil {
			return 0, false, err
		}
		n := int(v.msg[8])
		if n > maxFence {
			return 0, false, fmt.Errorf("%w: Fence with a payload of %d bytes (limit %d)", ErrMessageTooLarge, n, maxFence)
		}
		return 9 + n, true, nil
	case msgXVP:
		return 4, false, nil
	case msgSetDesktopSize:
		if err := v.fill(8); err != nil {
			return 0, false, err
		}
		return 8 + 16*int(v.msg[6]), false, nil
	case msgGII:
		if err := v.fill(4); err != nil {
			return 0, false, err
		}
		var order binary.ByteOrder = binary.LittleEndian
		if v.msg[1]&0x80 != 0 {
			order = binary.BigEndian
		}
		return 4 + int(order.Uint16(v.msg[2:4])), false, nil
	case msgQEMU:
		if err := v.fill(2); err != nil {
			return 0, false, err
		}
		switch sub := v.msg[1]; sub {
		case qemuExtendedKeyEvent:
			return 12, false, nil
		case qemuAudio:
			if err := v.fill(4); err != nil {
				return 0, false, err
			}
			switch op := binary.BigEndian.Uint16(v.msg[2:4]); op {
			case qemuAudioEnable, qemuAudioDisable:
				return 4, true, nil
			case qemuAudioSetFormat:
				return 10, true, nil
			default:
				return 0, false, fmt.Errorf("%w: type 255 (QEMU) audio operation %d", ErrUnknownMessage, op)
			}
		default:
			return 0, false, fmt.Errorf("%w: type 255 (QEMU) subtype %d", ErrUnknownMessage, sub)
		}
	default:
		return 0, false, fmt.Errorf("%w: type %d", ErrUnknownMessage, t)
	}
}

// fill reads from client until msg holds n bytes. What it read stays in
// msg when it fails, for a later call to go on with.
func (v *viewOnly) fill(n int) error {
	if n > cap(v.msg) { // only a SetEncodings of many encodings
		grown := make([]byte, len(v.msg), n)
		copy(grown, v.msg)
		v.msg = grown
	}
	for len(v.msg) < n {
		k, err := v.Conn.Read(v.msg[len(v.msg):n])
		v.msg = v.msg[:len(v.msg)+k]
		if err != nil && len(v.msg) < n {
			if err == io.EOF && len(v.msg) > 0 {
				return io.ErrUnexpectedEOF
			}
			return err
		}
	}
	return nil
}

// unexpected is a read error inside a message: the stream may not end there.
func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// announces reports whether the encodings of a SetEncodings list enc.
func announces(encodings []byte, enc int32) bool {
	for i := 0; i+4 <= len(encodings); i += 4 {
		if int32(binary.BigEndian.Uint32(encodings[i:])) == enc {
			return true
		}
	}
	return false
}
