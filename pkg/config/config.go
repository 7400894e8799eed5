// Package config reads a vncgate service's settings the way Nova's
// oslo.config reads nova.conf, so an operator's nova.conf carries over:
//
//	consoleauth --config-file /etc/nova/nova.conf --config-file /etc/vncgate/consoleauth.conf
//
// Each option is declared with the section Nova puts it in ([vnc]
// novncproxy_base_url, [consoleauth] token_ttl, [console] allowed_origins,
// [DEFAULT] cert, [libvirt] connection_uri, …); options vncgate has and Nova
// does not live in the [vncgate] section, the one place a reader looks for
// them and one Nova never uses.
//
// Sources, highest precedence first:
//
//  1. flags: --name=value, named after the option (a few take the name
//     Nova used before the option moved: [vnc] enabled is --vnc_enabled);
//  2. environment: VNCGATE_ and the flag's name in capitals
//     (VNCGATE_TOKEN_TTL=60);
//  3. files: --config-file FILE (repeatable; later files win) and
//     --config-dir DIR (its *.conf files, sorted), read in command-line
//     order as oslo does; --config_file (and --config_dir) still work. Without
//     either flag, VNCGATE_CONFIG_FILE and VNCGATE_CONFIG_DIR
//     (comma-separated) name them. No file is read unless named.
//  4. the option's default.
//
// Files follow oslo.config (see parseINI for the syntax). Values may refer
// to other options: $name or ${name} is the option name of the same
// section, else of [DEFAULT] ($my_ip, $state_path); $section.name names
// another section; $$ and \$ are a literal '$'. [DEFAULT] my_ip and host,
// when no file sets them, are this machine's address (as Nova finds it)
// and host name. Only file values and defaults are interpolated.
//
// What a service does with what it finds, option by option:
//   - an option it declared: read, typed, checked; a bad value is an error
//     naming the file and line;
//   - a vncgate option of another service, a Nova option of a Nova service
//     vncgate does not replace, any option of a section the service does
//     not read: ignored, counted in one debug line;
//   - a Nova option of a service vncgate replaces that vncgate does not
//     implement ([vnc] auth_schemes, …): accepted with one warning naming
//     them all;
//   - an unknown name in a strict section the service reads ([vncgate],
//     [vnc], [console], [consoleauth]: sections whose every name is known):
//     an error naming the file and line, with a suggestion. [DEFAULT] and
//     [libvirt] hold hundreds of Nova options and are not strict.
//
// Typed options share one syntax in flags, environment and files: whole
// seconds for durations (Nova's unit; a Go duration such as 1m30s also
// works; never negative), comma-separated lists (ListOpt), oslo's booleans
// (true/false, yes/no, on/off, 1/0), and TLS file groups (name_cert,
// name_key, name_ca).
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

// EnvPrefix starts the environment variable of every option.
const EnvPrefix = "VNCGATE_"

// Set is the options of one service.
type Set struct {
	service string
	opts    []*Option
	byKey   map[key]*Option
	// Output receives -help; os.Stderr when nil.
	Output io.Writer
}

// Option is one declared option.
type Option struct {
	key
	flag  string
	usage string
	value flag.Value
	def   string // the default, as text
	raw   string // the text the value was set from
	from  string // "" (default), "flag", the variable's name, or file:line
}

// Flag renames the option's flag and environment variable (Nova's older,
// unsectioned name, when the option's own is too generic for a flag).
func (o *Option) Flag(name string) *Option { o.flag = name; return o }

// New returns an empty Set for the named service.
func New(service string) *Set {
	return &Set{service: service, byKey: map[key]*Option{}}
}

// Var declares an option of any flag.Value; its current value is the default.
func (s *Set) Var(v flag.Value, section, name, usage string) *Option {
	k := key{normalizeSection(section), name}
	if e, ok := catalog[k]; !ok || e.kind != supported {
		panic(fmt.Sprintf("config: %v is not in pkg/config's catalogue of supported options", k))
	}
	if _, dup := s.byKey[k]; dup {
		panic(fmt.Sprintf("config: %v declared twice", k))
	}
	o := &Option{key: k, flag: name, usage: usage, value: v, def: v.String()}
	s.opts = append(s.opts, o)
	s.byKey[k] = o
	return o
}

// String declares a string option.
func (s *Set) String(p *string, section, name, def, usage string) *Option {
	*p = def
	return s.Var(stringValue{p}, section, name, usage)
}

// Int declares an integer option.
func (s *Set) Int(p *int, section, name string, def int, usage string) *Option {
	*p = def
	return s.Var(intValue{p}, section, name, usage)
}

// Bool declares a boolean option (oslo's words).
func (s *Set) Bool(p *bool, section, name string, def bool, usage string) *Option {
	*p = def
	return s.Var(boolValue{p}, section, name, usage)
}

// Seconds declares a duration in whole seconds (see ParseSeconds).
func (s *Set) Seconds(p *time.Duration, section, name string, def time.Duration, usage string) *Option {
	*p = def
	return s.Var(secondsValue{p}, section, name, usage+" (seconds)")
}

// List declares a comma-separated list (see ParseList).
func (s *Set) List(p *[]string, section, name string, def []string, usage string) *Option {
	*p = slices.Clone(def)
	return s.Var(listValue{p}, section, name, usage+" (comma-separated)")
}

// Choice declares a string that must be one of choices.
func (s *Set) Choice(p *string, section, name, def string, choices []string, usage string) *Option {
	*p = def
	return s.Var(choiceValue{p, choices}, section, name, usage+" ("+orList(choices)+")")
}

// TLS declares a group of PEM files, prefix_cert, prefix_key and
// prefix_ca; what says what they secure.
func (s *Set) TLS(p *tlsconfig.Files, section, prefix, what string) {
	s.String(&p.Cert, section, prefix+"_cert", "", "certificate (PEM) of "+what+"; also holds the key when "+prefix+"_key is empty; no TLS when empty")
	s.String(&p.Key, section, prefix+"_key", "", "private key (PEM) of "+prefix+"_cert, when in a file of its own")
	s.String(&p.CA, section, prefix+"_ca", "", "CA (PEM) that verifies the peer of "+what+" (for a server: turns on client certificates)")
}

// source is a --config-file or --config-dir, in command-line order.
type source struct {
	path string
	dir  bool
}

type sourceFlag struct {
	list *[]source
	dir  bool
}

func (f sourceFlag) String() string { return "" }
func (f sourceFlag) Set(s string) error {
	if s == "" {
		return errors.New("empty path")
	}
	*f.list = append(*f.list, source{s, f.dir})
	return nil
}

// Load reads args, then the environment, then the files args (or the
// environment) name, into the declared options. The returned Notes are
// for the service's logger, once it has one. -help returns flag.ErrHelp.
func (s *Set) Load(args []string) (Notes, error) {
	fs := flag.NewFlagSet(s.service, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; -help prints below
	fs.Usage = func() {}
	var sources []source
	fs.Var(sourceFlag{&sources, false}, "config-file", "")
	fs.Var(sourceFlag{&sources, false}, "config_file", "")
	fs.Var(sourceFlag{&sources, true}, "config-dir", "")
	fs.Var(sourceFlag{&sources, true}, "config_dir", "")
	byFlag := map[string]*Option{}
	for _, o := range s.opts {
		if byFlag[o.flag] != nil || fs.Lookup(o.flag) != nil {
			panic(fmt.Sprintf("config: flag %s declared twice", o.flag))
		}
		byFlag[o.flag] = o
		fs.Var(recorder{o}, o.flag, o.usage)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			out := s.Output
			if out == nil {
				out = os.Stderr
			}
			s.usage(out)
			return Notes{}, err
		}
		return Notes{}, fmt.Errorf("%w (-help lists the options)", err)
	}
	if fs.NArg() > 0 {
		return Notes{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	fs.Visit(func(f *flag.Flag) {
		if o := byFlag[f.Name]; o != nil {
			o.from = "flag"
		}
	})
	for _, o := range s.opts {
		if o.from != "" {
			continue
		}
		name := EnvPrefix + strings.ToUpper(o.flag)
		if v, ok := os.LookupEnv(name); ok {
			if err := (recorder{o}).Set(v); err != nil {
				return Notes{}, fmt.Errorf("environment %s=%q: %w", name, v, err)
			}
			o.from = name
		}
	}
	if len(sources) == 0 {
		for _, e := range []struct {
			name string
			dir  bool
		}{{EnvPrefix + "CONFIG_FILE", false}, {EnvPrefix + "CONFIG_DIR", true}} {
			for _, p := range ParseList(os.Getenv(e.name)) {
				sources = append(sources, source{p, e.dir})
			}
		}
	}
	l := &loader{set: s, values: map[key]assignment{}}
	if err := l.read(sources); err != nil {
		return Notes{}, err
	}
	if err := l.assign(); err != nil {
		return Notes{}, err
	}
	return l.notes, nil
}

// recorder sets an option's value and keeps the text it was set from.
type recorder struct{ o *Option }

func (r recorder) String() string {
	if r.o == nil {
		return ""
	}
	return r.o.value.String()
}
func (r recorder) Set(v string) error {
	if err := r.o.value.Set(v); err != nil {
		return err
	}
	r.o.raw = v
	return nil
}
func (r recorder) IsBoolFlag() bool {
	b, ok := r.o.value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// loader is one Load's reading of the files.
type loader struct {
	set *Set
	// values holds the last assignment of every (section, name), in the
	// order files are read: later files win.
	values map[key]assignment
	notes  Notes
}

func (l *loader) read(sources []source) error {
	reads := map[string]bool{}
	for _, o := range l.set.opts {
		reads[o.section] = true
	}
	ignoredSections := map[string]bool{}
	warned := map[key]string{}
	for _, src := range sources {
		files := []string{src.path}
		if src.dir {
			var err error
			if files, err = dirFiles(src.path); err != nil {
				return err
			}
		}
		for _, f := range files {
			as, err := readFile(f)
			if err != nil {
				return err
			}
			l.notes.Files = append(l.notes.Files, f)
			for _, a := range as {
				l.values[a.key] = a
				if !reads[a.section] {
					ignoredSections[a.section] = true
					l.notes.Ignored++
					continue
				}
				if l.set.byKey[a.key] != nil {
					continue
				}
				e, known := catalog[a.key]
				switch {
				case known && e.kind == deprecated && l.set.byKey[e.of] != nil:
					l.notes.Deprecated = append(l.notes.Deprecated, fmt.Sprintf("%v (%v): use %v", a.key, a.pos, e.of))
				case known && e.kind == unsupported && slices.Contains(e.services, l.set.service):
					if slices.Contains(e.harmless, strings.ToLower(a.value)) {
						delete(warned, a.key)
						l.notes.Ignored++
					} else {
						warned[a.key] = fmt.Sprintf("%v (%v): %s", a.key, a.pos, e.why)
					}
				case !known && strict[a.section]:
					return unknownOption(a)
				default:
					l.notes.Ignored++
				}
			}
		}
	}
	for sec := range ignoredSections {
		l.notes.IgnoredSections = append(l.notes.IgnoredSections, sec)
	}
	slices.Sort(l.notes.IgnoredSections)
	for _, u := range warned {
		l.notes.Unsupported = append(l.notes.Unsupported, u)
	}
	slices.Sort(l.notes.Unsupported)
	return nil
}

// unknownOption is the error for a name nobody knows in a strict section.
func unknownOption(a assignment) error {
	msg := fmt.Sprintf("%v: unknown option %v (neither Nova's nor vncgate's)", a.pos, a.key)
	if home := sectionsOf(a.name); len(home) > 0 {
		msg = fmt.Sprintf("%v: %v: %s is an option of [%s], not [%s]", a.pos, a.key, a.name, strings.Join(home, "], ["), a.section)
	} else if near := nearest(a.name, namesIn(a.section)); near != "" {
		msg += fmt.Sprintf("; did you mean %s?", near)
	}
	return errors.New(msg)
}

// assign gives every option not set by a flag or the environment its file
// value, interpolated, then interpolates defaults that refer to options.
func (l *loader) assign() error {
	for _, o := range l.set.opts {
		if o.from != "" {
			continue
		}
		a, ok := l.fileValue(o.key)
		if !ok {
			continue
		}
		v, err := l.interpolate(a.value, a.section, 0)
		if err != nil {
			return fmt.Errorf("%v: %v: %w", a.pos, o.key, err)
		}
		if err := (recorder{o}).Set(v); err != nil {
			return fmt.Errorf("%v: %v = %q: %w", a.pos, o.key, a.value, err)
		}
		o.from = a.pos.String()
	}
	for _, o := range l.set.opts {
		if o.from != "" || !strings.Contains(o.def, "$") {
			continue
		}
		v, err := l.interpolate(o.def, o.section, 0)
		if err != nil {
			return fmt.Errorf("default of %v: %w", o.key, err)
		}
		if err := (recorder{o}).Set(v); err != nil {
			return fmt.Errorf("default of %v = %q: %w", o.key, v, err)
		}
	}
	return nil
}

// fileValue is the last assignment to k or one of its deprecated names.
func (l *loader) fileValue(k key) (assignment, bool) {
	a, ok := l.values[k]
	for _, alias := range aliases(k) {
		b, found := l.values[alias]
		if found && (!ok || later(b.pos, a.pos, l.notes.Files)) {
			a, ok = b, true
		}
	}
	return a, ok
}

// later reports whether p comes after q in the reading order.
func later(p, q pos, files []string) bool {
	pi, qi := slices.Index(files, p.file), slices.Index(files, q.file)
	if pi != qi {
		return pi > qi
	}
	return p.line > q.line
}

var reference = regexp.MustCompile(`(?i)\$(?:\$|\{([_a-z][._a-z0-9]*)\}|([_a-z][._a-z0-9]*))`)

// interpolate replaces $name, ${name} and $section.name in v (oslo's
// string.Template substitution); "$$" and "\$" are a literal '$'.
func (l *loader) interpolate(v, section string, depth int) (string, error) {
	if !strings.Contains(v, "$") {
		return v, nil
	}
	if depth > 10 {
		return "", errors.New("interpolation loops")
	}
	v = strings.ReplaceAll(v, `\$`, "$$")
	var err error
	out := reference.ReplaceAllStringFunc(v, func(m string) string {
		if m == "$$" || err != nil {
			return "$"
		}
		name := strings.Trim(m[1:], "{}")
		var s string
		s, err = l.lookup(name, section, depth)
		return s
	})
	return out, err
}

// lookup is the value of name as a reference from section sees it.
func (l *loader) lookup(name, section string, depth int) (string, error) {
	var keys []key
	if sec, n, ok := strings.Cut(name, "."); ok {
		keys = []key{{normalizeSection(sec), n}}
	} else {
		keys = []key{{section, name}, {SectionDefault, name}}
	}
	for _, k := range keys {
		if o := l.set.byKey[k]; o != nil && (o.from == "flag" || strings.HasPrefix(o.from, EnvPrefix)) {
			return o.raw, nil
		}
		if a, ok := l.fileValue(k); ok {
			return l.interpolate(a.value, a.section, depth+1)
		}
		if v, ok := builtin(k); ok {
			return v, nil
		}
		if o := l.set.byKey[k]; o != nil {
			return l.interpolate(o.def, o.section, depth+1)
		}
	}
	return "", fmt.Errorf("$%s: no value for %v", name, keys[len(keys)-1])
}

// usage prints -help: the file flags, then the options by section.
func (s *Set) usage(w io.Writer) {
	fmt.Fprintf(w, "Usage: %s [--config-file FILE]... [--config-dir DIR]... [--option=value]...\n\n", s.service)
	fmt.Fprintf(w, "Every option is also read from %s<OPTION> and from the files, under its [section].\n", EnvPrefix)
	fmt.Fprintf(w, "  --config-file FILE   an oslo.config (nova.conf) file; repeatable, later files win\n")
	fmt.Fprintf(w, "  --config-dir DIR     every DIR/*.conf, sorted, after the files named before it\n")
	var sections []string
	for _, o := range s.opts {
		if !slices.Contains(sections, o.section) {
			sections = append(sections, o.section)
		}
	}
	for _, sec := range sections {
		fmt.Fprintf(w, "\n[%s]\n", sec)
		for _, o := range s.opts {
			if o.section != sec {
				continue
			}
			name := "--" + o.flag
			if o.flag != o.name {
				name += " (file: " + o.name + ")"
			}
			def := ""
			if o.def != "" {
				def = fmt.Sprintf(" (default %q)", o.def)
			}
			fmt.Fprintf(w, "  %s\n    \t%s%s\n", name, o.usage, def)
		}
	}
}

// nearest is the name in names closest to s, when one is close enough to
// be a misspelling.
func nearest(s string, names []string) string {
	best, bestD := "", 3
	slices.Sort(names)
	for _, n := range names {
		if d := distance(s, n); d < bestD {
			best, bestD = n, d
		}
	}
	return best
}

// distance is the Levenshtein distance between a and b.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
