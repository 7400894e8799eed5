package xvphead

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
	"unicode/utf8"
)

var sentinels = []error{ErrEmpty, ErrIncomplete, ErrTooLong, ErrMalformed, ErrMethod, ErrNoToken}

// kind names the one sentinel err wraps ("" for nil, "?" for none).
func kind(err error) string {
	if err == nil {
		return ""
	}
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return s.Error()
		}
	}
	return "?"
}

func TestRead(t *testing.T) {
	long := "CONNECT /console?token=t HTTP/1.1\r\nX: " + strings.Repeat("a", MaxSize) + "\r\n\r\n"
	tests := []struct {
		name      string
		in        string
		wantErr   error
		wantHead  Head
		wantRest  string
		wantTaken int // bytes Read may consume at most; 0 means len(in)
	}{
		{name: "nova xvp client", in: "CONNECT /console?token=abc HTTP/1.0\r\n\r\n",
			wantHead: Head{Method: "CONNECT", Target: "/console?token=abc", Proto: "HTTP/1.0", Token: "abc"}},
		{name: "http/1.1 with headers", in: "CONNECT /console?token=abc HTTP/1.1\r\nHost: p:6081\r\nUser-Agent: x\r\n\r\n",
			wantHead: Head{Method: "CONNECT", Target: "/console?token=abc", Proto: "HTTP/1.1", Token: "abc"}},
		{name: "get", in: "GET /console?token=abc HTTP/1.1\r\n\r\n",
			wantHead: Head{Method: "GET", Target: "/console?token=abc", Proto: "HTTP/1.1", Token: "abc"}},
		{name: "absolute form, other params, escapes", in: "GET http://p:6081/x?a=1&token=a%2Bb&token=z HTTP/1.1\r\n\r\n",
			wantHead: Head{Method: "GET", Target: "http://p:6081/x?a=1&token=a%2Bb&token=z", Proto: "HTTP/1.1", Token: "a+b"}},
		{name: "bare LF line ends", in: "CONNECT /console?token=abc HTTP/1.1\nHost: p\n\n",
			wantHead: Head{Method: "CONNECT", Target: "/console?token=abc", Proto: "HTTP/1.1", Token: "abc"}},
		{name: "pipelined bytes kept", in: "CONNECT /console?token=abc HTTP/1.1\r\n\r\nRFB 003.008\n\x01",
			wantHead: Head{Method: "CONNECT", Target: "/console?token=abc", Proto: "HTTP/1.1", Token: "abc"}, wantRest: "RFB 003.008\n\x01"},
		{name: "no token", in: "CONNECT /console HTTP/1.1\r\n\r\n", wantErr: ErrNoToken},
		{name: "empty token", in: "CONNECT /console?token= HTTP/1.1\r\n\r\n", wantErr: ErrNoToken},
		{name: "token in a header only", in: "CONNECT /console HTTP/1.1\r\nToken: abc\r\n\r\n", wantErr: ErrNoToken},
		{name: "token with a control byte", in: "CONNECT /console?token=a%0Db HTTP/1.1\r\n\r\n", wantErr: ErrMalformed},
		{name: "token too long", in: "CONNECT /console?token=" + strings.Repeat("a", MaxTokenLen+1) + " HTTP/1.1\r\n\r\n", wantErr: ErrMalformed},
		{name: "bad escape", in: "CONNECT /console?token=%zz HTTP/1.1\r\n\r\n", wantErr: ErrMalformed},
		{name: "post", in: "POST /console?token=abc HTTP/1.1\r\n\r\n", wantErr: ErrMethod},
		{name: "head", in: "HEAD /console?token=abc HTTP/1.1\r\n\r\n", wantErr: ErrMethod},
		{name: "lower-case method", in: "connect /console?token=abc HTTP/1.1\r\n\r\n", wantErr: ErrMalformed},
		{name: "http/2 preface", in: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", wantErr: ErrMalformed},
		{name: "http/0.9", in: "GET /console?token=abc\r\n\r\n", wantErr: ErrMalformed},
		{name: "double space", in: "CONNECT  /console?token=abc HTTP/1.1\r\n\r\n", wantErr: ErrMalformed},
		{name: "tab in target", in: "CONNECT /console?token=abc\t HTTP/1.1\r\n\r\n", wantErr: ErrMalformed},
		{name: "garbage fails on its first byte", in: "\x00\xff\x13garbage", wantErr: ErrMalformed, wantTaken: 1},
		{name: "rfb version instead of a request", in: "RFB 003.008\n", wantErr: ErrMalformed},
		{name: "bad request line fails before the head ends", in: "HELLO\r\nX: y\r\n", wantErr: ErrMalformed, wantTaken: len("HELLO\r\n")},
		{name: "no empty line before EOF", in: "CONNECT /console?token=abc HTTP/1.1\r\nHost: p\r\n", wantErr: ErrIncomplete},
		{name: "nothing at all", in: "", wantErr: ErrEmpty},
		{name: "too long", in: long, wantErr: ErrTooLong, wantTaken: MaxSize},
		{name: "exactly MaxSize", in: "CONNECT /console?token=t HTTP/1.1\r\nX: " + strings.Repeat("a", MaxSize-42) + "\r\n\r\n",
			wantHead: Head{Method: "CONNECT", Target: "/console?token=t", Proto: "HTTP/1.1", Token: "t"}},
	}
	for _, tc := range tests {
		for _, split := range []string{"whole", "one byte per read"} {
			t.Run(tc.name+"/"+split, func(t *testing.T) {
				src := &countingReader{r: strings.NewReader(tc.in)}
				var r io.Reader = src
				if split != "whole" {
					r = iotest.OneByteReader(src)
				}
				h, rest, err := Read(r)
				if err == nil {
					more, _ := io.ReadAll(src)
					rest = append(rest, more...)
				}
				if got, want := kind(err), kind(tc.wantErr); got != want {
					t.Fatalf("error: got %v, want %q", err, want)
				}
				if h != tc.wantHead {
					t.Errorf("head: got %+v, want %+v", h, tc.wantHead)
				}
				if string(rest) != tc.wantRest {
					t.Errorf("bytes after the head (rest, then unread): got %q, want %q", rest, tc.wantRest)
				}
				limit := tc.wantTaken
				if limit == 0 {
					limit = len(tc.in)
				}
				if split != "whole" && err != nil && src.n > limit {
					t.Errorf("consumed %d bytes, want at most %d", src.n, limit)
				}
				if src.n > MaxSize {
					t.Errorf("consumed %d bytes, want at most MaxSize %d", src.n, MaxSize)
				}
			})
		}
	}
}

func TestReadKeepsReadError(t *testing.T) {
	boom := errors.New("i/o timeout")
	_, _, err := Read(io.MultiReader(strings.NewReader("CONNECT /c"), iotest.ErrReader(boom)))
	if !errors.Is(err, ErrIncomplete) || !errors.Is(err, boom) {
		t.Fatalf("got %v, want ErrIncomplete wrapping the read error", err)
	}
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// FuzzParseHead checks Read and Parse on any bytes: no panic, the same
// answer however the bytes are split into reads, never more than MaxSize
// bytes consumed, and every accepted head safe to act on.
func FuzzParseHead(f *testing.F) {
	// The committed corpus in testdata/fuzz/FuzzParseHead holds the
	// interesting seeds; these few keep the test meaningful without it.
	f.Add([]byte("CONNECT /console?token=abc HTTP/1.1\r\n\r\n"))
	f.Add([]byte("GET /console?token=abc HTTP/1.0\nHost: x\n\nRFB 003.008\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		whole := &countingReader{r: bytes.NewReader(data)}
		h, rest, err := Read(whole)
		if k := kind(err); k == "?" {
			t.Fatalf("error %v wraps no sentinel", err)
		}
		if whole.n > MaxSize {
			t.Fatalf("consumed %d bytes, want at most %d", whole.n, MaxSize)
		}
		oneByte := bytes.NewReader(data)
		h1, rest1, err1 := Read(iotest.OneByteReader(oneByte))
		if kind(err1) != kind(err) || h1 != h {
			t.Fatalf("split reads disagree: whole (%+v, %v), one byte at a time (%+v, %v)", h, err, h1, err1)
		}
		if err == nil {
			// One byte per read leaves nothing buffered: the pipelined
			// bytes are still unread.
			after := data[len(data)-oneByte.Len():]
			if len(rest1) != 0 || !bytes.HasPrefix(after, rest) {
				t.Fatalf("one byte at a time: rest %q, unread %q; whole read rest %q", rest1, after, rest)
			}
		}
		if err != nil {
			return
		}
		headLen := whole.n - len(rest)
		if headLen <= 0 || !bytes.Equal(data[headLen:whole.n], rest) {
			t.Fatalf("rest %q is not what follows the head in the input", rest)
		}
		h2, err2 := Parse(data[:headLen])
		if err2 != nil || h2 != h {
			t.Fatalf("Parse of the head Read found: got (%+v, %v), want (%+v, nil)", h2, err2, h)
		}
		if h.Method != "CONNECT" && h.Method != "GET" {
			t.Fatalf("accepted method %q", h.Method)
		}
		if h.Proto != "HTTP/1.0" && h.Proto != "HTTP/1.1" {
			t.Fatalf("accepted protocol %q", h.Proto)
		}
		if h.Token == "" || len(h.Token) > MaxTokenLen || !printable(h.Token) || !utf8.ValidString(h.Token) {
			t.Fatalf("accepted token %q", h.Token)
		}
	})
}
