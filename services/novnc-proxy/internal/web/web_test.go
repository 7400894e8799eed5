package web

import (
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/vncgate/vncgate/services/novnc-proxy/internal/closecode"
)

// fakeNoVNC makes a directory shaped like the @novnc/novnc package.
func fakeNoVNC(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, body := range map[string]string{
		"core/rfb.js":                     "export default class RFB {}\n",
		"vendor/pako/lib/zlib/inflate.js": "export {}\n",
		"package.json":                    "{}\n",
	} {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func get(t *testing.T, h http.Handler, target string) *http.Response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec.Result()
}

func TestConsolePage(t *testing.T) {
	h, err := New(Options{NoVNCDir: fakeNoVNC(t)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, target string
		status       int
		location     string
		contains     string
	}{
		{"lite page", "/vnc_lite.html?path=%3Ftoken%3Dabc", 200, "", `src="vncgate/app.js"`},
		{"full page name", "/vnc.html?token=abc", 200, "", `id="screen"`},
		{"auto page redirects, keeping the query", "/vnc_auto.html?token=abc", 302, "vnc_lite.html?token=abc", ""},
		{"root redirects", "/", 302, "vnc_lite.html", ""},
		{"script", "/vncgate/app.js", 200, "", "new RFB("},
		{"style", "/vncgate/app.css", 200, "", "#screen"},
		{"close codes", "/vncgate/closecodes.js", 200, "", "export const closeMessages"},
		{"noVNC library", "/novnc/core/rfb.js", 200, "", "class RFB"},
		{"no directory listing", "/novnc/core/", 404, "", ""},
		{"no traversal", "/novnc/../web.go", 404, "", ""},
		{"unknown", "/nope", 404, "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := get(t, h, tc.target)
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != tc.status {
				t.Fatalf("got %d, want %d", resp.StatusCode, tc.status)
			}
			if got := resp.Header.Get("Location"); got != tc.location {
				t.Errorf("Location: got %q, want %q", got, tc.location)
			}
			if !strings.Contains(string(body), tc.contains) {
				t.Errorf("body does not contain %q", tc.contains)
			}
			if got := resp.Header.Get("Referrer-Policy"); got != "no-referrer" {
				t.Errorf("Referrer-Policy: got %q, want no-referrer (the token is in the URL)", got)
			}
		})
	}
	resp := get(t, h, "/vnc_lite.html")
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "connect-src 'self'") {
		t.Errorf("CSP: got %q, want connect-src 'self'", csp)
	}
	if xfo := resp.Header.Get("X-Frame-Options"); xfo != "" {
		t.Errorf("X-Frame-Options: got %q, want none (dashboards embed consoles)", xfo)
	}
}

// TestPageIsWhatTempestChecks fetches each console page name a Nova base
// URL uses, following redirects as tempest's urllib3 does, and applies
// tempest's checks (tempest/api/compute/servers/test_novnc.py,
// _validate_novnc_html): 200, an HTML document, the word noVNC and a script.
func TestPageIsWhatTempestChecks(t *testing.T) {
	h, err := New(Options{NoVNCDir: fakeNoVNC(t)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	for _, name := range []string{"vnc_lite.html", "vnc.html", "vnc_auto.html"} {
		t.Run(name, func(t *testing.T) {
			resp, err := srv.Client().Get(srv.URL + "/" + name + "?path=%3Ftoken%3Dabc")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body := string(b)
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("got %d, want 200", resp.StatusCode)
			}
			if !regexp.MustCompile(`<html.*>`).MatchString(body) || !strings.Contains(body, "</html>") {
				t.Errorf("not an HTML document:\n%s", body)
			}
			for _, want := range []string{"noVNC", "<script"} {
				if !strings.Contains(body, want) {
					t.Errorf("page lacks %q, which tempest requires", want)
				}
			}
		})
	}
}

// TestPageImportsResolve follows the page's script and its imports as a
// browser would, so a moved file cannot break the page unnoticed.
func TestPageImportsResolve(t *testing.T) {
	h, err := New(Options{NoVNCDir: fakeNoVNC(t)})
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(get(t, h, "/vnc_lite.html").Body)
	base, _ := url.Parse("http://proxy/vnc_lite.html")
	refs := regexp.MustCompile(`(?:src|href)="([^"]+)"`).FindAllStringSubmatch(string(page), -1)
	if len(refs) < 2 {
		t.Fatalf("got %d references in the page, want the script and the style", len(refs))
	}
	for _, ref := range refs {
		u := base.ResolveReference(mustURL(t, ref[1]))
		if resp := get(t, h, u.Path); resp.StatusCode != 200 {
			t.Errorf("page references %s: got %d", u.Path, resp.StatusCode)
		}
		if !strings.HasSuffix(u.Path, ".js") {
			continue
		}
		script, _ := io.ReadAll(get(t, h, u.Path).Body)
		for _, imp := range regexp.MustCompile(`(?m)^import .* from "([^"]+)";`).FindAllStringSubmatch(string(script), -1) {
			iu := u.ResolveReference(mustURL(t, imp[1]))
			if resp := get(t, h, iu.Path); resp.StatusCode != 200 {
				t.Errorf("%s imports %s: got %d", u.Path, iu.Path, resp.StatusCode)
			}
		}
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestCloseCodesScriptHasEverySentence(t *testing.T) {
	h, err := New(Options{NoVNCDir: fakeNoVNC(t)})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(get(t, h, "/vncgate/closecodes.js").Body)
	for _, e := range closecode.All() {
		if !strings.Contains(string(body), e.Sentence) {
			t.Errorf("closecodes.js lacks the sentence of %d", e.Code)
		}
	}
}

func TestWebDirServesAnotherNoVNC(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"vnc.html", "vnc_lite.html", "app/ui.js"} {
		p := filepath.Join(dir, filepath.FromSlash(name))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, []byte("noVNC "+name), 0o644)
	}
	h, err := New(Options{WebDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		target   string
		status   int
		location string
	}{
		{"/vnc.html?path=%3Ftoken%3Dabc", 200, ""},
		{"/vnc_lite.html", 200, ""},
		{"/app/ui.js", 200, ""},
		{"/vnc_auto.html?token=abc", 302, "vnc_lite.html?token=abc"},
		{"/app/", 404, ""},
	} {
		t.Run(tc.target, func(t *testing.T) {
			resp := get(t, h, tc.target)
			if resp.StatusCode != tc.status || resp.Header.Get("Location") != tc.location {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, resp.Header.Get("Location"), tc.status, tc.location)
			}
		})
	}
}

func TestMissingLibraryIsAClearError(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want string
	}{
		{"no noVNC", Options{NoVNCDir: t.TempDir()}, "npm ci"},
		{"no web dir", Options{WebDir: filepath.Join(t.TempDir(), "nope")}, "not a readable directory"},
		{"nothing", Options{}, "no noVNC"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error saying %q", err, tc.want)
			}
		})
	}
	if _, err := FindNoVNC([]string{t.TempDir()}); err == nil || !strings.Contains(err.Error(), "npm ci") {
		t.Errorf("FindNoVNC: got %v, want an error saying npm ci", err)
	}
}

// pageElements lists the elements of the console page with an id, and
// whether each starts hidden or disabled, for testdata/pagetest.mjs.
func pageElements(t *testing.T) []map[string]any {
	t.Helper()
	html, err := fs.ReadFile(static, "static/vnc.html")
	if err != nil {
		t.Fatal(err)
	}
	var els []map[string]any
	for _, m := range regexp.MustCompile(`<\w+([^>]*)>`).FindAllStringSubmatch(string(html), -1) {
		id := regexp.MustCompile(`\bid="([^"]+)"`).FindStringSubmatch(m[1])
		if id == nil {
			continue
		}
		bare := regexp.MustCompile(`"[^"]*"`).ReplaceAllString(m[1], `""`) // attribute names only
		els = append(els, map[string]any{
			"id":       id[1],
			"hidden":   regexp.MustCompile(`\bhidden\b`).MatchString(bare),
			"disabled": regexp.MustCompile(`\bdisabled\b`).MatchString(bare),
		})
	}
	return els
}

// pageResult is what testdata/pagetest.mjs reports.
type pageResult struct {
	WebSocket         string                    `json:"websocket"`
	ViewOnly          bool                      `json:"viewOnly"`
	Body              map[string]string         `json:"body"`
	Elements          map[string]map[string]any `json:"elements"`
	PastePanelOpened  bool                      `json:"pastePanelOpened"`
	SentByClicks      []string                  `json:"sentByClicks"`
	SentByForce       []string                  `json:"sentByForce"`
	ViewOnlyAtConnect bool                      `json:"viewOnlyAtConnect"`
}

// runPage runs the page's script in node (testdata/pagetest.mjs) with the
// query string query, against a stand-in noVNC.
func runPage(t *testing.T, query string) pageResult {
	t.Helper()
	node, dir := pageFiles(t)
	els, _ := json.Marshal(pageElements(t))
	script, _ := filepath.Abs(filepath.Join("testdata", "pagetest.mjs"))
	cmd := exec.Command(node, script, dir, query)
	cmd.Env = append(os.Environ(), "PAGE_ELEMENTS="+string(els))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node %s: %v\n%s", script, err, stderr.String())
	}
	var r pageResult
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("pagetest.mjs answered %q: %v", out, err)
	}
	return r
}

// TestViewOnlyPage runs the page's script with and without view_only=1 in
// its URL (consoleauth's hint for a view-only token): with it the page says
// "View only", sets noVNC's viewOnly and offers no input, not even when its
// controls are clicked by force; without it everything works as before.
func TestViewOnlyPage(t *testing.T) {
	const token = "?path=%3Ftoken%3Dabc"
	for _, tc := range []struct {
		name     string
		query    string
		viewOnly bool
	}{
		{"normal console", token, false},
		{"view-only console", token + "&view_only=1", true},
		{"view_only=true", token + "&view_only=true", true},
		{"view_only=0", token + "&view_only=0", false},
		{"inside path is not the hint", "?path=" + url.QueryEscape("?token=abc&view_only=1"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runPage(t, tc.query)
			if r.WebSocket != "ws://proxy.example/websockify?token=abc" {
				t.Errorf("WebSocket URL: got %q, want the token's", r.WebSocket)
			}
			if r.ViewOnly != tc.viewOnly || r.ViewOnlyAtConnect != tc.viewOnly {
				t.Errorf("noVNC viewOnly: got %v (at connect %v), want %v", r.ViewOnly, r.ViewOnlyAtConnect, tc.viewOnly)
			}
			badge := r.Elements["viewonly"]
			if badge == nil || badge["hidden"] != !tc.viewOnly {
				t.Errorf("#viewonly: got %v, want hidden=%v", badge, !tc.viewOnly)
			}
			if got := r.Body["viewOnly"] == "true"; got != tc.viewOnly {
				t.Errorf("body data-view-only: got %v, want %v", r.Body, tc.viewOnly)
			}
			for _, id := range []string{"ctrlaltdel", "paste-send"} {
				if got := r.Elements[id]["disabled"]; got != tc.viewOnly {
					t.Errorf("#%s once connected: disabled %v, want %v", id, got, tc.viewOnly)
				}
			}
			if got := r.Elements["paste-toggle"]["disabled"]; got != tc.viewOnly {
				t.Errorf("#paste-toggle: disabled %v, want %v", got, tc.viewOnly)
			}
			if tc.viewOnly {
				if r.PastePanelOpened || len(r.SentByClicks) != 0 || len(r.SentByForce) != 0 {
					t.Errorf("view-only page: paste panel opened %v, sent %v by clicks and %v by force, want nothing",
						r.PastePanelOpened, r.SentByClicks, r.SentByForce)
				}
				return
			}
			want := []string{"paste: typed into the page", "ctrl-alt-del"}
			if !r.PastePanelOpened || !slices.Equal(r.SentByClicks, want) {
				t.Errorf("normal page: paste panel opened %v, sent %v, want opened and %v", r.PastePanelOpened, r.SentByClicks, want)
			}
		})
	}
}

// TestPageHasAViewOnlyBadge: the badge is in the page, hidden until the
// script shows it, and says what it means.
func TestPageHasAViewOnlyBadge(t *testing.T) {
	h, err := New(Options{NoVNCDir: fakeNoVNC(t)})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(get(t, h, "/vnc_lite.html?path=%3Ftoken%3Dabc&view_only=1").Body)
	if !regexp.MustCompile(`<span id="viewonly" hidden[^>]*>View only</span>`).Match(body) {
		t.Errorf("page lacks the hidden View only badge:\n%s", body)
	}
}

// pageFiles writes the page's script, its close codes and a stand-in
// noVNC into a temporary folder for a node driver, and returns node's path
// and the folder.
func pageFiles(t *testing.T) (node, dir string) {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("node missing (make deps installs it)")
		}
		t.Skip("node missing (make deps installs it)")
	}
	dir = t.TempDir()
	app, err := fs.ReadFile(static, "static/app.js")
	if err != nil {
		t.Fatal(err)
	}
	fake, err := os.ReadFile(filepath.Join("testdata", "fake_rfb.js"))
	if err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string][]byte{
		"package.json":          []byte(`{"type": "module"}`),
		"vncgate/app.js":        app,
		"vncgate/closecodes.js": closecode.Script(),
		"novnc/core/rfb.js":     fake,
	} {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return node, dir
}
