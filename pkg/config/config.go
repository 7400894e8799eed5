// Package config fills a service's flags from, in order of precedence, the
// command line, the environment and an optional file, so operators can carry
// Nova settings over under the same names.
//
// A flag named token_ttl is read from --token_ttl, then VNCGATE_TOKEN_TTL,
// then a line "token_ttl = 600" of the file named by --config_file.
// The file is INI-like: '#' and ';' start comments and [section] headers
// are ignored, so the [vnc] section of a nova.conf can be pasted in.
package config

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"strings"
)

// EnvPrefix starts the environment variable of every flag.
const EnvPrefix = "VNCGATE_"

// Load parses args into fs and fills the flags not given there from the
// environment and then from the config file. It adds the config_file flag.
func Load(fs *flag.FlagSet, args []string) error {
	file := fs.String("config_file", "", "optional file of name = value lines (env "+EnvPrefix+"CONFIG_FILE)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || envErr != nil {
			return
		}
		name := EnvPrefix + strings.ToUpper(f.Name)
		if v, ok := os.LookupEnv(name); ok {
			if err := fs.Set(f.Name, v); err != nil {
				envErr = fmt.Errorf("environment %s: %w", name, err)
			}
			set[f.Name] = true
		}
	})
	if envErr != nil || *file == "" {
		return envErr
	}
	return loadFile(fs, *file, set)
}

func loadFile(fs *flag.FlagSet, path string, set map[string]bool) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' || line[0] == '[' {
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			return fmt.Errorf("%s:%d: want name = value", path, n)
		}
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if fs.Lookup(name) == nil {
			return fmt.Errorf("%s:%d: unknown setting %q", path, n, name)
		}
		if set[name] {
			continue // the command line or environment wins
		}
		if err := fs.Set(name, value); err != nil {
			return fmt.Errorf("%s:%d: %s: %w", path, n, name, err)
		}
	}
	return sc.Err()
}
