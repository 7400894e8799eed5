package chaos

import (
	"testing"
	"time"
)

// TestClassify: a 503 or 409 whose text names the condition is a clear
// refusal; any other answer, or one that names nothing, is a failure.
func TestClassify(t *testing.T) {
	for _, c := range []struct {
		name, body string
		code       int
		refusal    bool
	}{
		{"consoleauth without quorum", `{"serviceUnavailable":{"code":503,"message":"the console service is temporarily unavailable"}}`, 503, true},
		{"agent down", `{"conflictingRequest":{"code":409,"message":"compute host h of instance u is down: compute agent of host h at a unreachable"}}`, 409, true},
		{"xvp", "console service unavailable: retry later", 503, true},
		{"empty 503", "", 503, false},
		{"503 naming nothing", "<html>oops</html>", 503, false},
		{"502", "bad gateway: unavailable", 502, false},
		{"500", "internal error", 500, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			o := classify(outcome{kind: mintReq, start: time.Now()}, c.code, c.body)
			if got := o.refusal != ""; got != c.refusal || (o.refusal == "") == (o.failure == "") {
				t.Errorf("%d %q: got refusal %q failure %q, want refusal %v", c.code, c.body, o.refusal, o.failure, c.refusal)
			}
		})
	}
}
