// Package gctune is the garbage collector setting every vncgate service
// starts with (Start). A service's live heap is a few MiB, so by Go's
// default (GOGC=100, a collection each time the heap doubles) a proxy
// collects every few hundred sessions, and each cycle shows in the tail of
// session setup. While the live heap is small, collections here wait until
// the heap reaches HeapTarget (at most 6× the live heap); from half of it
// on, Go's default applies again, so memory at scale (10,000 sessions on a
// proxy) is what it would be without this. The GC percent follows the
// live heap after every collection (bytedance/gopkg's gctuner).
//
// GOGC in the environment turns this off: the operator's setting wins, as
// does GOMEMLIMIT, which the runtime applies on top.
package gctune

import (
	"os"

	"github.com/bytedance/gopkg/util/gctuner"
)

// HeapTarget is the heap size a collection waits for while the live heap
// is below half of it.
const HeapTarget = 64 << 20

// Limits of the GC percent the tuning sets: never below Go's default, at
// most 500 (a collection at 6× the live heap).
const (
	minPercent = 100
	maxPercent = 500
)

// Start starts the tuning, unless GOGC is set, and reports whether it did.
// Call it once, first thing in main.
func Start() bool {
	if os.Getenv("GOGC") != "" {
		return false
	}
	gctuner.SetMinGCPercent(minPercent)
	gctuner.SetMaxGCPercent(maxPercent)
	gctuner.Tuning(HeapTarget)
	return true
}

// Percent is the GC percent in force: the tuning's, or GOGC's.
func Percent() uint32 { return gctuner.GetGCPercent() }
