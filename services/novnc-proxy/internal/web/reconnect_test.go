package web

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vncgate/vncgate/services/novnc-proxy/internal/closecode"
)

// pageAfter is what testdata/reconnect.mjs reports: the page after each
// close, and after the last socket connected (nil when none did).
type pageAfter struct {
	URLs   []string `json:"urls"`
	Delays []int    `json:"delays"`
	Steps  []struct {
		State, Status, Message, CloseCode, Connects, Reconnects string
	} `json:"steps"`
	Last *struct {
		State, Status, Message, Connects string
	} `json:"last"`
}

// runCloses runs the page's script in node against a stand-in noVNC, with
// each WebSocket it opens ending as closes says (testdata/reconnect.mjs).
func runCloses(t *testing.T, closes string) pageAfter {
	t.Helper()
	node, dir := pageFiles(t)
	els, _ := json.Marshal(pageElements(t))
	script, _ := filepath.Abs(filepath.Join("testdata", "reconnect.mjs"))
	cmd := exec.Command(node, script, dir, "?path=%3Ftoken%3Dabc", closes)
	cmd.Env = append(os.Environ(), "PAGE_ELEMENTS="+string(els))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node %s: %v\n%s", script, err, stderr.String())
	}
	var r pageAfter
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("reconnect.mjs answered %q: %v", out, err)
	}
	return r
}

// TestPageReconnectsOnServiceRestart: on 1012 (a proxy's drain) the page
// says only "Reconnecting…" and opens the same URL again, which connects;
// retries are bounded with growing waits; only 1012 (and, once
// reconnecting, a lost or refused connection) is retried; a token that no
// longer works (single-use) ends with the usual sentence.
func TestPageReconnectsOnServiceRestart(t *testing.T) {
	const want = "ws://proxy.example/websockify?token=abc"
	sentence := func(c closecode.Code) string { e, _ := closecode.Lookup(c); return e.Sentence }

	t.Run("drain, then another replica", func(t *testing.T) {
		r := runCloses(t, `[{"code": 1012, "opened": true}]`)
		if len(r.Steps) != 1 || r.Steps[0].State != "reconnecting" || r.Steps[0].Status != "Reconnecting…" || r.Steps[0].Message != "" {
			t.Fatalf("after 1012: got %+v, want reconnecting and no message", r.Steps)
		}
		if len(r.URLs) != 2 || r.URLs[0] != want || r.URLs[1] != want {
			t.Errorf("WebSockets: got %q, want the same URL twice", r.URLs)
		}
		if r.Last == nil || r.Last.State != "connected" || r.Last.Message != "" || r.Last.Connects != "2" {
			t.Errorf("after reconnecting: got %+v, want connected (2 connects), no message", r.Last)
		}
	})

	t.Run("no replica comes back", func(t *testing.T) {
		r := runCloses(t, `[{"code": 1012, "opened": true}, {"code": 1006}, {"code": 1006}, {"code": 1006}, {"code": 1006}, {"code": 1006}, {"code": 1006}]`)
		if !slices.Equal(r.Delays, []int{200, 800, 1500, 2500, 5000}) {
			t.Errorf("waits: got %v ms, want 5 growing ones (about 10 s)", r.Delays)
		}
		last := r.Steps[len(r.Steps)-1]
		if len(r.URLs) != 6 || last.State != "disconnected" || last.Message == "" {
			t.Errorf("after 5 tries: %d WebSockets, page %+v; want 6 and a disconnected page saying why", len(r.URLs), last)
		}
		for _, s := range r.Steps[:len(r.Steps)-1] {
			if s.State != "reconnecting" || s.Message != "" {
				t.Errorf("while retrying: got %+v, want reconnecting and no message", s)
			}
		}
	})

	t.Run("single-use token", func(t *testing.T) {
		r := runCloses(t, `[{"code": 1012, "opened": true}, {"code": 4401, "opened": true}]`)
		last := r.Steps[len(r.Steps)-1]
		if len(r.URLs) != 2 || last.State != "disconnected" || last.CloseCode != "4401" || last.Message != sentence(closecode.TokenInvalid) {
			t.Errorf("got %d WebSockets, page %+v; want the token's failure shown after one retry", len(r.URLs), last)
		}
	})

	for _, c := range []closecode.Code{closecode.Normal, closecode.Revoked, closecode.Unavailable} {
		t.Run("no retry on "+c.String(), func(t *testing.T) {
			r := runCloses(t, `[{"code": `+strconv.Itoa(int(c))+`, "opened": true}]`)
			if len(r.URLs) != 1 || len(r.Delays) != 0 || r.Steps[0].State != "disconnected" {
				t.Errorf("close %d: got %d WebSockets, page %+v; want no retry", c, len(r.URLs), r.Steps[0])
			}
		})
	}
}
