// Package rfb speaks just enough of the RFB (VNC) protocol, RFC 6143, for
// vncgate's demo VM and for tests that must prove a console works end to end.
//
// Server is a VNC server with no VM behind it. It promises:
//   - versions 3.8, 3.7 and 3.3 (any other 3.x is treated as 3.3, as the RFC
//     says); any other greeting ends the connection without a reply;
//   - security type None only, or with Options.VeNCrypt VeNCrypt only as
//     QEMU with tls-creds offers it: VeNCrypt 0.2, subtype X509None, TLS,
//     optionally requiring a client certificate as QEMU's verify-peer=yes
//     (a client without one is disconnected silently after the TLS
//     handshake). AcceptSecurity is that server side on its own, for
//     stand-ins that speak something else after the handshake;
//   - a framebuffer of Options.Width x Options.Height that changes every
//     Options.FrameInterval (moving colour bars and a frame counter), sent
//     in Raw encoding whatever the client asks for in SetEncodings, in any
//     true-colour pixel format of 8, 16 or 32 bits (SetPixelFormat);
//   - a full update answers at once; an incremental one is answered as soon
//     as the picture has changed since the last update sent on that
//     connection, so a client polling as fast as it can gets one frame per
//     FrameInterval;
//   - KeyEvent, PointerEvent and ClientCutText messages are recorded (the
//     latest Options.MaxEvents of each kind) for tests to read or wait for;
//   - bounded work per connection: a handshake deadline, a write deadline
//     per update, cut text kept up to Options.MaxCutText bytes, updates
//     streamed from a small pooled buffer rather than a whole frame.
//
// The client half (Handshake, HandshakeAs, RequestUpdate, ReadUpdate,
// SendKey, SendPointer, SendCutText) works on any io.ReadWriter, typically
// a net.Conn through a proxy under test, and against real QEMU VNC servers.
// It offers security type None only and asks for Raw encoding only; it skips the
// messages and pseudo-encodings a server may send anyway (Bell,
// SetColourMapEntries, ServerCutText, DesktopSize, ExtendedDesktopSize,
// Cursor, LastRect). It sets no deadlines: callers set them on the conn.
package rfb
