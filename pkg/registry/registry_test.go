package registry

import (
	"slices"
	"strings"
	"testing"
)

func TestParseInstanceUUID(t *testing.T) {
	const canonical = "6f2b4c3e-8d1a-4e5f-9a7b-0c1d2e3f4a5b"
	tests := []struct {
		name, in, want, err string
	}{
		{name: "canonical", in: canonical, want: canonical},
		{name: "upper case is lowered", in: strings.ToUpper(canonical), want: canonical},
		{name: "mixed case", in: "6F2b4C3e-8d1a-4e5f-9a7b-0c1d2e3f4a5B", want: canonical},
		{name: "empty", in: "", err: "want 36 characters"},
		{name: "braces", in: "{" + canonical + "}", err: "want 36 characters"},
		{name: "no dashes", in: strings.ReplaceAll(canonical, "-", ""), err: "want 36 characters"},
		{name: "urn", in: "urn:uuid:" + canonical, err: "want 36 characters"},
		{name: "dash moved", in: "6f2b4c3e8-d1a-4e5f-9a7b-0c1d2e3f4a5b", err: "dash at position 9"},
		{name: "not hex", in: "6f2b4c3e-8d1a-4e5f-9a7b-0c1d2e3f4a5g", err: "not the character at position 36"},
		{name: "slash", in: "6f2b4c3e-8d1a-4e5f-9a7b-0c1d2e3f4a/b", err: "not the character"},
		{name: "multibyte of the right length", in: "6f2b4c3e-8d1a-4e5f-9a7b-0c1d2e3f4é5", err: "not the character"},
		{name: "2 MiB", in: strings.Repeat("a", 2<<20), err: "not 2097152"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseInstanceUUID(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("got %q, %v, want an error containing %q", got, err, tt.err)
				}
				if len(err.Error()) > 100 {
					t.Errorf("error is %d bytes long, want a short one that does not echo the input", len(err.Error()))
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("got %q, %v, want %q", got, err, tt.want)
			}
		})
	}
}

func TestParseComputeInstanceKey(t *testing.T) {
	const id = "6f2b4c3e-8d1a-4e5f-9a7b-0c1d2e3f4a5b"
	tests := []struct {
		key        string
		host, uuid string
		ok         bool
	}{
		{ComputeInstanceKey("h1", id), "h1", id, true},
		{ComputeInstanceKey("rack-1.example", id), "rack-1.example", id, true},
		{ComputeInstancesRoot + "/" + id, "", "", false},               // no host
		{ComputeInstanceKey("h1", strings.ToUpper(id)), "", "", false}, // not canonical
		{ComputeInstanceKey("h1", "instance-1"), "", "", false},        // not a UUID
		{ComputesPrefix + "h1/" + id, "", "", false},                   // another family
		{ComputeInstancesRoot + id, "", "", false},                     // no host segment
		{ComputeInstanceKey("h1", id) + "/extra", "", "", false},       // deeper
		{ComputeInstancesRoot + "a/b/" + id, "", "", false},            // host a cannot pass for host "a/b"
	}
	for _, tt := range tests {
		host, uuid, ok := ParseComputeInstanceKey(tt.key)
		if host != tt.host || uuid != tt.uuid || ok != tt.ok {
			t.Errorf("%s: got %q, %q, %v, want %q, %q, %v", tt.key, host, uuid, ok, tt.host, tt.uuid, tt.ok)
		}
	}
}

func TestRevocationReasons(t *testing.T) {
	codes := RevocationCodes()
	if !slices.IsSorted(codes) || slices.Contains(codes, "") || !slices.Contains(codes, DefaultRevocationReason) {
		t.Fatalf("codes: got %v, want sorted, without \"\", with %q", codes, DefaultRevocationReason)
	}
	for _, c := range append(codes, "") {
		s, ok := RevocationSentence(c)
		if !ok || s == "" || len(s) > 80 {
			t.Errorf("code %q: got %q, %v, want a short sentence", c, s, ok)
		}
	}
	if got, _ := RevocationSentence(""); got != RevocationReasons[DefaultRevocationReason] {
		t.Errorf("empty code: got %q, want the default's sentence", got)
	}
	if _, ok := RevocationSentence("the instance was stopped"); ok {
		t.Error("a sentence is accepted as a code")
	}
}
