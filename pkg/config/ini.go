package config

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// assignment is one "name = value" of a file.
type assignment struct {
	key
	value string
	pos   pos
}

// pos is where an assignment (its first line) is.
type pos struct {
	file string
	line int
}

func (p pos) String() string { return fmt.Sprintf("%s:%d", p.file, p.line) }

// parseINI reads a file the way oslo.config's parser does
// (oslo_config/iniparser.py), so a nova.conf means to vncgate what it
// means to Nova:
//   - "[section]" starts a section; section names are case-insensitive
//     except DEFAULT (oslo lower-cases the others);
//   - lines starting with '#' or ';' are comments (only at the start of a
//     line: "a = b # c" has the value "b # c");
//   - "name = value" or "name: value", whichever separator comes first;
//     name and value are trimmed, and one pair of matching quotes ("..."
//     or '...') around the value is removed;
//   - a line starting with a space or tab continues the previous value
//     (joined with a newline); a blank line or any other line ends it;
//   - an assignment before any section is an error, as is a line that is
//     neither, with the file and line named.
//
// It is written here rather than taken from gopkg.in/ini.v1 because what
// matters is oslo's behaviour, not INI in general: ini.v1 does not give a
// key's line (errors must name file:line), interpolates Python-style
// %(name)s rather than $name with oslo's lookup order, reads dotted section
// names as parent and child, and has its own rules for continuation lines
// and quotes. oslo's own parser is sixty lines; this is its translation.
func parseINI(r io.Reader, file string) ([]assignment, error) {
	var (
		out     []assignment
		section string
		cur     *assignment
		lines   []string
	)
	flush := func() {
		if cur != nil {
			cur.value = strings.Join(lines, "\n")
			out = append(out, *cur)
			cur, lines = nil, nil
		}
	}
	fail := func(n int, msg, text string) error {
		return fmt.Errorf("%s:%d: %s: %q", file, n, msg, text)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for n := 1; sc.Scan(); n++ {
		text := sc.Text()
		if n == 1 {
			text = strings.TrimPrefix(text, "\ufeff")
		}
		text = strings.TrimRight(text, " \t\r\n\v\f")
		switch {
		case text == "":
			flush()
			continue
		case text[0] == ' ' || text[0] == '\t':
			if cur == nil {
				return nil, fail(n, "unexpected continuation line", text)
			}
			lines = append(lines, strings.TrimLeft(text, " \t"))
			continue
		}
		flush()
		switch text[0] {
		case '[':
			if !strings.HasSuffix(text, "]") {
				return nil, fail(n, "invalid section (must end with ])", text)
			}
			if len(text) <= 2 {
				return nil, fail(n, "empty section name", text)
			}
			section = normalizeSection(text[1 : len(text)-1])
		case '#', ';':
		default:
			name, value, ok := splitAssignment(text)
			if !ok {
				return nil, fail(n, "no '=' or ':' in assignment", text)
			}
			if name == "" {
				return nil, fail(n, "empty option name", text)
			}
			if section == "" {
				return nil, fail(n, "option before any [section] (files are nova.conf's syntax: vncgate's own options go under [vncgate])", text)
			}
			cur = &assignment{key: key{section, name}, pos: pos{file, n}}
			lines = []string{value}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	flush()
	return out, nil
}

func splitAssignment(line string) (name, value string, ok bool) {
	colon, equal := strings.IndexByte(line, ':'), strings.IndexByte(line, '=')
	sep := equal
	switch {
	case colon < 0 && equal < 0:
		return "", "", false
	case equal < 0 || colon >= 0 && colon < equal:
		sep = colon
	}
	name, value = strings.TrimSpace(line[:sep]), strings.TrimSpace(line[sep+1:])
	if len(value) >= 1 && (value[0] == '"' || value[0] == '\'') && value[len(value)-1] == value[0] {
		if len(value) == 1 {
			value = ""
		} else {
			value = value[1 : len(value)-1]
		}
	}
	return name, value, true
}

// normalizeSection is oslo's _normalize_group_name.
func normalizeSection(s string) string {
	if s == SectionDefault {
		return s
	}
	return strings.ToLower(s)
}

// readFile parses one configuration file.
func readFile(path string) ([]assignment, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config file: %w", err)
	}
	return parseINI(bytes.NewReader(b), path)
}

// dirFiles lists the *.conf files of dir, sorted, as oslo's --config-dir.
func dirFiles(dir string) ([]string, error) {
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("config dir: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("config dir %s: not a directory", dir)
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.conf"))
	if err != nil {
		return nil, fmt.Errorf("config dir %s: %w", dir, err)
	}
	slices.Sort(files)
	return files, nil
}
