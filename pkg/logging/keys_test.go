package logging

import (
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/vncgate/vncgate/pkg/requestid"
)

// logCalls are slog.Logger's methods that take key-value pairs, by the
// index of their first key.
var logCalls = map[string]int{
	"Debug": 1, "Info": 1, "Warn": 1, "Error": 1,
	"DebugContext": 2, "InfoContext": 2, "WarnContext": 2, "ErrorContext": 2,
	"Log": 3, "With": 0,
}

// attrCalls are slog's attribute constructors: the key is their first argument.
var attrCalls = map[string]bool{
	"String": true, "Int": true, "Int64": true, "Uint64": true, "Float64": true,
	"Bool": true, "Time": true, "Duration": true, "Any": true, "Group": true,
}

// notLoggers are receivers whose Error or Log methods are not slog's.
var notLoggers = map[string]bool{"status": true, "http": true, "fmt": true, "errors": true, "t": true, "b": true, "tb": true}

// literalKeys returns every string literal in a key position of a slog
// call in the Go files (tests and generated code aside) under root, as
// key → "file:line" of each use.
func literalKeys(t *testing.T, root string) map[string][]string {
	t.Helper()
	keys := map[string][]string{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); name == "testdata" || name == "node_modules" || path != root && strings.HasPrefix(name, ".") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") || strings.HasSuffix(path, ".pb.go") || strings.HasSuffix(path, ".pb.gw.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		add := func(e ast.Expr) bool {
			lit, ok := e.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return false
			}
			if k, err := strconv.Unquote(lit.Value); err == nil {
				keys[k] = append(keys[k], fset.Position(lit.Pos()).String())
			}
			return true
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			recv, _ := sel.X.(*ast.Ident)
			if recv != nil && recv.Name == "slog" {
				if attrCalls[sel.Sel.Name] && len(call.Args) > 0 {
					add(call.Args[0])
				}
				return true
			}
			first, ok := logCalls[sel.Sel.Name]
			if !ok || recv != nil && notLoggers[recv.Name] {
				return true
			}
			for i := first; i < len(call.Args); i += 2 {
				if !add(call.Args[i]) {
					break // an Attr, or not a key-value list
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return keys
}

// TestEveryLoggedKeyIsInTheSchema keeps the services' log calls to Keys:
// a new spelling of a thing already named fails here.
func TestEveryLoggedKeyIsInTheSchema(t *testing.T) {
	root := filepath.Join("..", "..")
	if _, err := os.Stat(filepath.Join(root, "go.work")); err != nil {
		t.Skip("not in the repository:", err)
	}
	seen := 0
	for _, dir := range []string{"pkg", "services", "cmd"} {
		if _, err := os.Stat(filepath.Join(root, dir)); err != nil {
			continue
		}
		for k, uses := range literalKeys(t, filepath.Join(root, dir)) {
			seen++
			if _, ok := Keys[k]; !ok {
				t.Errorf("log key %q is not in logging.Keys: use the key that names this thing, or add it there; used at %s", k, strings.Join(uses, ", "))
			}
		}
	}
	if seen < 50 {
		t.Fatalf("found %d log keys in the sources, want many more: the scan is broken", seen)
	}
}

// TestTheDocumentedKeysAreKeys: the package comment's table names only keys
// of the schema.
func TestTheDocumentedKeysAreKeys(t *testing.T) {
	src, err := os.ReadFile("logging.go")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile(`(?m)^//\t([a-z_]+(?:, [a-z_]+)*)  +\S`)
	rows := row.FindAllStringSubmatch(string(src), -1)
	if len(rows) < 10 {
		t.Fatalf("found %d rows in the key table, want the table", len(rows))
	}
	for _, m := range rows {
		for _, k := range strings.Split(m[1], ", ") {
			if _, ok := Keys[k]; !ok && k != "key" {
				t.Errorf("the package comment documents %q, which is not in Keys", k)
			}
		}
	}
}

func TestRequestIDFromContext(t *testing.T) {
	var buf bytes.Buffer
	log := New(&buf, "consoleauth", Options{})
	ctx := requestid.NewContext(t.Context(), "req-1")
	records := func() []map[string]any {
		t.Helper()
		var out []map[string]any
		for _, line := range bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n")) {
			var rec map[string]any
			if err := json.Unmarshal(line, &rec); err != nil {
				t.Fatalf("not JSON: %q", line)
			}
			out = append(out, rec)
		}
		buf.Reset()
		return out
	}
	for _, tc := range []struct {
		name string
		log  func()
		want any
	}{
		{"from the context", func() { log.InfoContext(ctx, "rpc") }, "req-1"},
		{"none without one", func() { log.InfoContext(t.Context(), "rpc") }, nil},
		{"none without a context", func() { log.Info("rpc") }, nil},
		{"the call's own wins", func() { log.InfoContext(ctx, "rpc", KeyRequestID, "own") }, "own"},
		{"the logger's own wins", func() { log.With(KeyRequestID, "own").InfoContext(ctx, "rpc") }, "own"},
		{"through With", func() { log.With(KeyInstance, "i").InfoContext(ctx, "rpc") }, "req-1"},
	} {
		tc.log()
		recs := records()
		if len(recs) != 1 {
			t.Fatalf("%s: got %d records, want 1", tc.name, len(recs))
		}
		if got := recs[0][KeyRequestID]; got != tc.want {
			t.Errorf("%s: got request_id %v, want %v", tc.name, got, tc.want)
		}
	}
	// One key, never twice, in the JSON line.
	log.With(KeyRequestID, "own").InfoContext(ctx, "rpc")
	if n := strings.Count(buf.String(), `"request_id"`); n != 1 {
		t.Errorf("got request_id %d times in %q, want once", n, buf.String())
	}
}
