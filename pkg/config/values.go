package config

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The value types below are flag.Values, so the same parser reads a flag,
// an environment variable and a file line.

type stringValue struct{ p *string }

func (v stringValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}
func (v stringValue) Set(s string) error { *v.p = s; return nil }

// intValue is oslo's IntOpt: a decimal integer.
type intValue struct{ p *int }

func (v intValue) String() string {
	if v.p == nil {
		return "0"
	}
	return strconv.Itoa(*v.p)
}
func (v intValue) Set(s string) error {
	n, err := strconv.Atoi(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("want an integer, got %q", s)
	}
	*v.p = n
	return nil
}

// boolValue is oslo's BoolOpt: true/false, yes/no, on/off, 1/0, in any
// case. As a flag, "--name" alone means true.
type boolValue struct{ p *bool }

func (v boolValue) String() string {
	if v.p == nil {
		return "false"
	}
	return strconv.FormatBool(*v.p)
}
func (v boolValue) IsBoolFlag() bool { return true }
func (v boolValue) Set(s string) error {
	b, err := ParseBool(s)
	if err != nil {
		return err
	}
	*v.p = b
	return nil
}

// ParseBool reads a boolean as oslo.config does: true, yes, on, 1 or false,
// no, off, 0, in any case.
func ParseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "yes", "on", "1":
		return true, nil
	case "false", "no", "off", "0":
		return false, nil
	}
	return false, fmt.Errorf("want true or false (yes/no, on/off, 1/0), got %q", s)
}

// secondsValue is a duration in Nova's unit: whole seconds ("300"), or for
// convenience a Go duration ("1m30s", "500ms"). Negative is refused; 0
// usually means off.
type secondsValue struct{ p *time.Duration }

func (v secondsValue) String() string {
	if v.p == nil {
		return "0s"
	}
	return FormatSeconds(*v.p)
}
func (v secondsValue) Set(s string) error {
	d, err := ParseSeconds(s)
	if err != nil {
		return err
	}
	*v.p = d
	return nil
}

// ParseSeconds reads a duration the way every vncgate service does: a
// whole number of seconds, as Nova's options are (IntOpt, "300"), or a Go
// duration ("1m30s", "500ms"). Negative durations are refused.
func ParseSeconds(s string) (time.Duration, error) {
	s = strings.TrimSpace(s)
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n < 0 {
			return 0, fmt.Errorf("%q: negative", s)
		}
		if n > int64(maxSeconds) {
			return 0, fmt.Errorf("%q: too long", s)
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("want whole seconds (300) or a duration (5m, 1m30s, 500ms), got %q", s)
	}
	if d < 0 {
		return 0, fmt.Errorf("%q: negative", s)
	}
	return d, nil
}

const maxSeconds = int64(time.Duration(1<<63-1) / time.Second)

// FormatSeconds writes d as ParseSeconds reads it back: whole seconds as a
// number ("300"), anything finer as a Go duration ("1.5s").
func FormatSeconds(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10)
	}
	return d.String()
}

// listValue is oslo's ListOpt: comma-separated, items trimmed, empty items
// dropped. Setting it replaces the list.
type listValue struct{ p *[]string }

func (v listValue) String() string {
	if v.p == nil {
		return ""
	}
	return strings.Join(*v.p, ",")
}
func (v listValue) Set(s string) error { *v.p = ParseList(s); return nil }

// ParseList reads oslo's ListOpt: comma-separated items, trimmed (a
// multi-line value may put one item per line), empty items dropped.
func ParseList(s string) []string {
	var out []string
	for item := range strings.SplitSeq(s, ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// choiceValue is a string from a fixed set (oslo's StrOpt with choices).
type choiceValue struct {
	p       *string
	choices []string
}

func (v choiceValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}
func (v choiceValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if !slices.Contains(v.choices, s) {
		return fmt.Errorf("want %s, got %q", orList(v.choices), s)
	}
	*v.p = s
	return nil
}

func orList(words []string) string {
	switch len(words) {
	case 0:
		return "nothing"
	case 1:
		return words[0]
	}
	return strings.Join(words[:len(words)-1], ", ") + " or " + words[len(words)-1]
}
