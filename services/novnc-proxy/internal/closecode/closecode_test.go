package closecode

import (
	"strings"
	"testing"
)

func TestTable(t *testing.T) {
	all := All()
	for i, e := range all {
		if i > 0 && all[i-1].Code >= e.Code {
			t.Errorf("table not sorted or duplicated at %d", e.Code)
		}
		// RFC 6455 §7.4 and IANA's registry: 1004-1006 and 1015 never go on
		// the wire; 1012 (service restart) does.
		wire := (e.Code >= 1000 && e.Code <= 1003) || (e.Code >= 1007 && e.Code <= 1014) || (e.Code >= 4000 && e.Code <= 4999)
		if !wire {
			t.Errorf("%d cannot be sent in a close frame", e.Code)
		}
		if e.Name == "" || e.Sentence == "" {
			t.Errorf("%d lacks a name or sentence", e.Code)
		}
		if got, ok := Lookup(e.Code); !ok || got != e {
			t.Errorf("Lookup(%d): got %+v, %v", e.Code, got, ok)
		}
	}
	if _, ok := Lookup(4999); ok {
		t.Error("Lookup(4999): found, want not found")
	}
}

func TestScriptIsAModule(t *testing.T) {
	s := string(Script())
	if !strings.Contains(s, "export const closeMessages = {") || !strings.Contains(s, `"4401": "`) {
		t.Fatalf("got %s", s)
	}
}

// The page reconnects on exactly this code: it must stay 1012.
func TestShuttingDownIsServiceRestart(t *testing.T) {
	if ShuttingDown != 1012 {
		t.Fatalf("ShuttingDown = %d, want 1012 (service restart)", ShuttingDown)
	}
}
