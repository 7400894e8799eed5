package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/spf13/pflag"

	"github.com/vncgate/vncgate/pkg/grpcclient"
)

// EnvPrefix starts every setting's environment variable.
const EnvPrefix = "VNCGATECTL_"

// maxConfigBytes caps the settings file: it holds a few paths.
const maxConfigBytes = 64 << 10

// settings are vncgatectl's: where consoleauth is and how to prove being
// an operator.
type settings struct {
	// ConsoleAuth is consoleauth's gRPC address: host:port or a
	// comma-separated list (pkg/grpcclient).
	ConsoleAuth string `toml:"consoleauth"`
	// CA verifies consoleauth; Cert and Key are the operator's certificate
	// (role operator) and its key.
	CA   string `toml:"ca"`
	Cert string `toml:"cert"`
	Key  string `toml:"key"`
	// Output is table or json.
	Output string `toml:"output"`
	// Timeout bounds each call to consoleauth.
	Timeout string `toml:"timeout"`
}

// setting is one of them: its flag, and its field.
type setting struct {
	flag, def, usage string
	field            func(*settings) *string
}

var allSettings = []setting{
	{"consoleauth", "127.0.0.1:6090", "consoleauth's gRPC address: host:port, or a comma-separated list of them",
		func(s *settings) *string { return &s.ConsoleAuth }},
	{"ca", "", "CA certificate (PEM) that signed consoleauth's certificate",
		func(s *settings) *string { return &s.CA }},
	{"cert", "", "the operator's certificate (PEM, role operator)",
		func(s *settings) *string { return &s.Cert }},
	{"key", "", "the operator certificate's private key (PEM); empty: inside --cert",
		func(s *settings) *string { return &s.Key }},
	{"output", "table", "output format: table or json",
		func(s *settings) *string { return &s.Output }},
	{"timeout", "10s", "how long each call to consoleauth may take",
		func(s *settings) *string { return &s.Timeout }},
}

// declareSettings adds the settings' flags (and --config) to flags.
func declareSettings(flags *pflag.FlagSet, s *settings, config *string) {
	flags.StringVar(config, "config", "", "settings file (TOML: consoleauth, ca, cert, key, output, timeout); also "+EnvPrefix+"CONFIG")
	for _, st := range allSettings {
		if st.flag == "output" {
			flags.StringVarP(st.field(s), st.flag, "o", st.def, st.usage)
			continue
		}
		flags.StringVar(st.field(s), st.flag, st.def, st.usage+" (env "+envName(st.flag)+")")
	}
}

func envName(flag string) string { return EnvPrefix + strings.ToUpper(flag) }

// resolve fills what no flag set from the environment, then from the
// settings file, and checks the result. Paths in the file are relative to
// the file's folder.
func resolve(flags *pflag.FlagSet, s *settings, config string, lookupEnv func(string) (string, bool)) error {
	if !flags.Changed("config") {
		config, _ = lookupEnv(EnvPrefix + "CONFIG")
	}
	var file settings
	if config != "" {
		var err error
		if file, err = readSettings(config); err != nil {
			return usageError{err}
		}
	}
	for _, st := range allSettings {
		if flags.Changed(st.flag) {
			continue
		}
		if v, ok := lookupEnv(envName(st.flag)); ok {
			*st.field(s) = v
		} else if v := *st.field(&file); v != "" {
			*st.field(s) = v
		}
	}
	if err := s.check(); err != nil {
		return usageError{err}
	}
	return nil
}

// readSettings reads a settings file; unknown keys are errors, so a typo
// does not pass for a default.
func readSettings(path string) (settings, error) {
	var s settings
	info, err := os.Stat(path)
	if err != nil {
		return s, fmt.Errorf("settings file: %w", err)
	}
	if info.Size() > maxConfigBytes {
		return s, fmt.Errorf("settings file %s: larger than %d bytes", path, maxConfigBytes)
	}
	md, err := toml.DecodeFile(path, &s)
	if err != nil {
		return s, fmt.Errorf("settings file %s: %w", path, err)
	}
	if extra := md.Undecoded(); len(extra) > 0 {
		return s, fmt.Errorf("settings file %s: unknown setting %q: want one of consoleauth, ca, cert, key, output, timeout", path, extra[0].String())
	}
	dir := filepath.Dir(path)
	for _, p := range []*string{&s.CA, &s.Cert, &s.Key} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	return s, nil
}

// check refuses settings no call could work with.
func (s *settings) check() error {
	if _, err := grpcclient.ParseEndpoints("consoleauth", s.ConsoleAuth); err != nil {
		return err
	}
	if !slices.Contains([]string{"table", "json"}, s.Output) {
		return fmt.Errorf("output %.20q: want table or json", s.Output)
	}
	if d, err := s.timeout(); err != nil || d <= 0 || d > time.Hour {
		return fmt.Errorf("timeout %.20q: want a duration such as 10s, up to 1h", s.Timeout)
	}
	switch {
	case s.Cert == "" && s.CA == "":
		return errors.New("no credentials: consoleauth takes operators by certificate: set --ca, --cert and --key " +
			"(or " + EnvPrefix + "CA, _CERT, _KEY, or a --config file)")
	case s.Cert == "":
		return errors.New("no operator certificate: set --cert (and --key)")
	case s.CA == "":
		return errors.New("no CA to verify consoleauth with: set --ca")
	}
	return nil
}

func (s *settings) timeout() (time.Duration, error) { return time.ParseDuration(s.Timeout) }
