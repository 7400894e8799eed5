package tokenstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/vncgate/vncgate/pkg/registry"
)

// Errors of Locate, wrapped by errors whose message names the instance.
var (
	// ErrUnknownInstance: no agent published the instance.
	ErrUnknownInstance = errors.New("instance not found")
	// ErrComputeDown: the instance's compute host has no live agent.
	ErrComputeDown = errors.New("compute host down")
)

// Agent is the compute agent that runs an instance.
type Agent struct {
	// ComputeHost is the hypervisor host's name.
	ComputeHost string
	// Address is the agent's gRPC address, host:port.
	Address string
}

// Locate finds the agent of an instance: registry.LocationKey(uuid) names
// its compute host, registry.ComputeKey(host) the agent's address, present
// only while the agent keeps its lease alive.
func (s *Store) Locate(ctx context.Context, uuid string) (Agent, error) {
	var loc registry.Location
	found, err := s.getJSON(ctx, registry.LocationKey(uuid), &loc)
	if err != nil {
		return Agent{}, err
	}
	if !found || loc.ComputeHost == "" {
		return Agent{}, &detailError{kind: ErrUnknownInstance, msg: fmt.Sprintf("instance %s not found", uuid)}
	}
	var c registry.Compute
	found, err = s.getJSON(ctx, registry.ComputeKey(loc.ComputeHost), &c)
	if err != nil {
		return Agent{}, err
	}
	if !found || c.Address == "" {
		return Agent{}, &detailError{kind: ErrComputeDown,
			msg: fmt.Sprintf("compute host %s of instance %s is down", loc.ComputeHost, uuid)}
	}
	return Agent{ComputeHost: loc.ComputeHost, Address: c.Address}, nil
}

func (s *Store) getJSON(ctx context.Context, key string, v any) (bool, error) {
	cctx, cancel := context.WithTimeout(ctx, s.timeout)
	resp, err := s.cli.Get(cctx, key)
	cancel()
	if err != nil {
		return false, s.fail(ctx, "get "+key, err)
	}
	if len(resp.Kvs) == 0 {
		return false, nil
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, v); err != nil {
		return false, fmt.Errorf("decode %s: %w", key, err)
	}
	return true, nil
}

// detailError carries a sentinel for errors.Is and a message of its own, so
// callers see "compute host h1 of instance X is down" rather than the
// sentinel's text twice.
type detailError struct {
	kind error
	msg  string
}

func (e *detailError) Error() string { return e.msg }
func (e *detailError) Unwrap() error { return e.kind }
