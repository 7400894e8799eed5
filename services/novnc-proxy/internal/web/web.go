// Package web serves the browser side of the console: our console page
// (embedded: vnc_lite.html and vnc.html, the names Nova base URLs use, with
// vnc_auto.html redirecting to it), the close-code sentences it shows
// (generated from package closecode), and the noVNC library it is built on,
// read from a directory (npm's @novnc/novnc, installed by `npm ci`, never
// committed nor embedded). Alternatively, like Nova's `web` option, it serves
// a whole other noVNC build from a directory instead of our page.
//
// A view-only console's URL carries view_only=1 beside `path`: the page then
// shows "View only" and offers and sends no input. That is a courtesy to the
// user; the proxy drops a view-only session's input whatever the page does.
//
// Directory listings are never served. Pages carry no-referrer (the token is
// in the URL) and a same-origin Content-Security-Policy; no frame-ancestors
// restriction, since dashboards embed consoles in iframes.
package web

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/vncgate/vncgate/services/novnc-proxy/internal/closecode"
)

//go:embed static
var static embed.FS

// NoVNCMarker is the file that identifies a noVNC library directory.
const NoVNCMarker = "core/rfb.js"

// Options says where the browser code comes from.
type Options struct {
	// NoVNCDir holds the noVNC library (core/rfb.js, vendor/...), served
	// under /novnc/. Required unless WebDir is set.
	NoVNCDir string
	// WebDir, when set, is served at / instead of our page (Nova's `web`).
	WebDir string
}

// New returns the handler, or an error saying what is missing.
func New(opts Options) (http.Handler, error) {
	if opts.WebDir != "" {
		if st, err := os.Stat(opts.WebDir); err != nil || !st.IsDir() {
			return nil, fmt.Errorf("web directory %s: not a readable directory", opts.WebDir)
		}
		return &webDir{files: noListing(http.Dir(opts.WebDir)), dir: opts.WebDir}, nil
	}
	if opts.NoVNCDir == "" {
		return nil, errors.New("no noVNC library directory given")
	}
	if _, err := os.Stat(filepath.Join(opts.NoVNCDir, filepath.FromSlash(NoVNCMarker))); err != nil {
		return nil, fmt.Errorf("noVNC library not found: %s has no %s (run `npm ci` in services/novnc-proxy/web, or set novnc_core_dir or web)", opts.NoVNCDir, NoVNCMarker)
	}
	sub, err := fs.Sub(static, "static")
	if err != nil {
		return nil, err
	}
	return &page{
		static: sub,
		novnc:  http.StripPrefix("/novnc", http.FileServer(noListing(http.Dir(opts.NoVNCDir)))),
		codes:  closecode.Script(),
	}, nil
}

// FindNoVNC returns the first of candidates that holds the noVNC library.
func FindNoVNC(candidates []string) (string, error) {
	for _, c := range candidates {
		if _, err := os.Stat(filepath.Join(c, filepath.FromSlash(NoVNCMarker))); err == nil {
			return c, nil
		}
	}
	return "", fmt.Errorf("noVNC library not found in any of %s (run `npm ci` in services/novnc-proxy/web, or set novnc_core_dir or web)", strings.Join(candidates, ", "))
}

type page struct {
	static fs.FS
	novnc  http.Handler
	codes  []byte
}

func (p *page) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	switch r.URL.Path {
	case "/", "/vnc_auto.html":
		// Relative, so that a path prefix added by a reverse proxy stays.
		target := "vnc_lite.html"
		if r.URL.RawQuery != "" {
			target += "?" + r.URL.RawQuery
		}
		h.Set("Location", target)
		w.WriteHeader(http.StatusFound)
	case "/vnc_lite.html", "/vnc.html":
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Security-Policy", "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'")
		p.file(w, r, "vnc.html", "text/html; charset=utf-8")
	case "/vncgate/app.js":
		p.file(w, r, "app.js", "text/javascript; charset=utf-8")
	case "/vncgate/app.css":
		p.file(w, r, "app.css", "text/css; charset=utf-8")
	case "/favicon.ico":
		w.WriteHeader(http.StatusNoContent) // none; spares the browser console a 404
	case "/vncgate/closecodes.js":
		h.Set("Content-Type", "text/javascript; charset=utf-8")
		h.Set("Cache-Control", "no-cache")
		w.Write(p.codes)
	default:
		if strings.HasPrefix(r.URL.Path, "/novnc/") {
			h.Set("Cache-Control", "no-cache")
			p.novnc.ServeHTTP(w, r)
			return
		}
		http.NotFound(w, r)
	}
}

func (p *page) file(w http.ResponseWriter, r *http.Request, name, contentType string) {
	b, err := fs.ReadFile(p.static, name)
	if err != nil {
		http.Error(w, "missing embedded file", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", contentType)
	if w.Header().Get("Cache-Control") == "" {
		w.Header().Set("Cache-Control", "no-cache")
	}
	if r.Method == http.MethodHead {
		return
	}
	w.Write(b)
}

// webDir serves another noVNC build. Its vnc_auto.html, if it has none,
// redirects to vnc_lite.html (or vnc.html).
type webDir struct {
	files http.FileSystem
	dir   string
}

func (d *webDir) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "no-referrer")
	if r.URL.Path == "/vnc_auto.html" && !d.exists("vnc_auto.html") {
		target := "vnc_lite.html"
		if !d.exists(target) {
			target = "vnc.html"
		}
		if r.URL.RawQuery != "" {
			target += "?" + r.URL.RawQuery
		}
		w.Header().Set("Location", target) // relative: keeps a proxy's path prefix
		w.WriteHeader(http.StatusFound)
		return
	}
	http.FileServer(d.files).ServeHTTP(w, r)
}

func (d *webDir) exists(name string) bool {
	_, err := os.Stat(filepath.Join(d.dir, name))
	return err == nil
}

// noListing hides directories without an index.html: 404 instead of a listing.
type noListingFS struct{ fs http.FileSystem }

func noListing(fs http.FileSystem) http.FileSystem { return noListingFS{fs} }

func (n noListingFS) Open(name string) (http.File, error) {
	f, err := n.fs.Open(name)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.IsDir() {
		index, err := n.fs.Open(path.Join(name, "index.html"))
		if err != nil {
			f.Close()
			return nil, os.ErrNotExist
		}
		index.Close()
	}
	return f, nil
}
