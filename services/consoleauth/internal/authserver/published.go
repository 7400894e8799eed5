package authserver

import (
	"context"
	"errors"
	"fmt"

	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/services/consoleauth/internal/agentclient"
	"github.com/vncgate/vncgate/services/consoleauth/internal/tokenstore"
)

// What the agents publish in their instances' claims stands for their
// answers (tokenstore.Agent.Vouched): a mint takes the console from the
// claim and a token check judges the token's host and port against it,
// neither calling the agent. The agent is asked as before whenever the
// claim does not vouch (the index not following etcd, a claim of an older
// agent or of another registration) and whenever the connection to the
// agent is failing: a claim is the answer of an agent that is there.

// vouched reports whether agent's published console may be taken for its
// answer now.
func (s *Server) vouched(agent tokenstore.Agent) bool {
	return agent.Vouched && !s.agents.Down(agentOf(agent))
}

// checkPublished is ValidateConsolePort's judgement of rec's host and port,
// made from what the agent published.
func checkPublished(agent tokenstore.Agent, rec registry.Token) error {
	reason := agent.NoConsole
	if reason == "" {
		reason = agent.Console.Mismatch(rec.Host, rec.Port)
	}
	if reason != "" {
		return detail(ErrConsoleMoved, "console moved: "+reason)
	}
	return nil
}

// mint locates rec's instance, takes its console from the claim when it
// vouches for one or from its agent otherwise, and mints a token for it.
// A claim that changed after the index read it (ErrClaimChanged, rare)
// sends the mint the long way: etcd and the agent.
func (s *Server) mint(ctx context.Context, rec registry.Token) (tokenstore.Minted, tokenstore.Agent, error) {
	uuid := rec.InstanceUUID
	agent, err := s.store.Locate(ctx, uuid)
	if err != nil {
		return tokenstore.Minted{}, agent, err
	}
	if s.vouched(agent) && agent.NoConsole == "" {
		rec.ComputeHost = agent.ComputeHost
		rec.Host, rec.Port, rec.InternalAccessPath = agent.Console.Host, agent.Console.Port, agent.Console.InternalAccessPath
		minted, err := s.store.MintFromClaim(ctx, agent, rec)
		if !errors.Is(err, tokenstore.ErrClaimChanged) {
			return minted, agent, err
		}
		if agent, err = s.store.LocateFresh(ctx, uuid); err != nil {
			return tokenstore.Minted{}, agent, err
		}
	}
	// An instance without a console is asked too: the agent's answer says
	// which error it is (not running, no VNC, not here).
	console, err := s.agents.GetConsole(ctx, agentOf(agent), uuid, rec.ConsoleType)
	if errors.Is(err, agentclient.ErrUnreachable) {
		// Nova answers 409 when the instance's compute host is down.
		err = detail(tokenstore.ErrComputeDown,
			fmt.Sprintf("compute host %s of instance %s is down: %v", agent.ComputeHost, uuid, err))
	}
	if err != nil {
		return tokenstore.Minted{}, agent, err
	}
	rec.ComputeHost = agent.ComputeHost
	rec.Host, rec.Port, rec.InternalAccessPath = console.Host, console.Port, console.InternalAccessPath
	minted, err := s.store.Mint(ctx, rec)
	return minted, agent, err
}
