package driver

import (
	"testing"

	"github.com/vncgate/vncgate/pkg/registry"
)

// TestReasonsAreRevocationCodes: consoleauth refuses any other reason.
func TestReasonsAreRevocationCodes(t *testing.T) {
	for _, code := range []string{ReasonStopped, ReasonDeleted, ReasonCrashed, ReasonMigrated, ReasonConsole, ReasonStarted} {
		if _, ok := registry.RevocationSentence(code); !ok || code == "" {
			t.Errorf("reason %q is not a code of registry.RevocationReasons", code)
		}
	}
}
