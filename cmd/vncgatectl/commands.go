package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/grpcclient"
	"github.com/vncgate/vncgate/pkg/registry"
	"github.com/vncgate/vncgate/pkg/tlsconfig"
)

// maxRecvBytes lets a full session list in (consoleauth answers at most
// 5,000 sessions of a few hundred bytes).
const maxRecvBytes = 16 << 20

// app is one run of the CLI.
type app struct {
	out, errOut io.Writer
	lookupEnv   func(string) (string, bool)
	settings    settings
	config      string
	// ran is set once a command's own code runs: an error before that is
	// cobra's (unknown command or flag, wrong arguments), a usage error.
	ran bool
}

// run executes the command line args and returns the exit code.
func run(ctx context.Context, args []string, out, errOut io.Writer, lookupEnv func(string) (string, bool)) int {
	a := &app{out: out, errOut: errOut, lookupEnv: lookupEnv}
	root := a.root()
	root.SetArgs(args)
	root.SetOut(out)
	root.SetErr(errOut)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	if !a.ran {
		err = usageError{err}
	}
	fmt.Fprintln(errOut, "vncgatectl:", describe(err))
	if _, ok := err.(usageError); ok && !a.ran {
		fmt.Fprintln(errOut, "Run 'vncgatectl --help' for usage.")
	}
	return exitCode(err)
}

// describe is an error as an operator reads it: consoleauth's message and
// its code.
func describe(err error) string {
	if st, ok := status.FromError(err); ok {
		return fmt.Sprintf("%s (%s)", st.Message(), st.Code())
	}
	return err.Error()
}

func (a *app) root() *cobra.Command {
	root := &cobra.Command{
		Use:   "vncgatectl",
		Short: "Operate a vncgate fleet: live sessions, token revocation, proxy drains, status",
		Long: `vncgatectl talks to consoleauth's OperationsService (gRPC, mutual TLS with a
certificate of role operator). consoleauth answers from etcd, where every proxy
publishes its live sessions, so one call sees the whole fleet.

Settings come from flags, then VNCGATECTL_* variables (VNCGATECTL_CONSOLEAUTH,
VNCGATECTL_CA, VNCGATECTL_CERT, VNCGATECTL_KEY, VNCGATECTL_OUTPUT,
VNCGATECTL_TIMEOUT), then a settings file (--config or VNCGATECTL_CONFIG).

Exit codes: 0 ok, 1 error, 2 usage (or a request consoleauth found invalid),
3 not found, 4 consoleauth or etcd unavailable, 5 credentials refused.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	declareSettings(root.PersistentFlags(), &a.settings, &a.config)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	_ = root.RegisterFlagCompletionFunc("output", fixedCompletion("table", "json"))

	sessions := &cobra.Command{Use: "sessions", Short: "List and end live console sessions"}
	sessions.AddCommand(a.sessionsList(), a.sessionsKill())
	tokens := &cobra.Command{Use: "tokens", Short: "Revoke console tokens"}
	tokens.AddCommand(a.tokensRevoke())
	proxy := &cobra.Command{Use: "proxy", Short: "Act on a console proxy"}
	proxy.AddCommand(a.proxyDrain())
	root.AddCommand(a.status(), sessions, tokens, proxy)
	return root
}

// action wraps a command's body: it marks the run as past cobra's checks
// and gives the body a connection to consoleauth and a bounded context.
func (a *app) action(body func(ctx context.Context, cc *grpc.ClientConn, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		a.ran = true
		if err := resolve(cmd.Flags(), &a.settings, a.config, a.lookupEnv); err != nil {
			return err
		}
		cc, err := a.dial()
		if err != nil {
			return err
		}
		defer cc.Close()
		timeout, _ := a.settings.timeout()
		ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
		defer cancel()
		return body(ctx, cc, args)
	}
}

// dial connects to every consoleauth endpoint with the operator's
// certificate (pkg/grpcclient: round-robin, failover, retries of the
// read-only calls).
func (a *app) dial() (*grpc.ClientConn, error) {
	s := a.settings
	creds, err := tlsconfig.Files{Cert: s.Cert, Key: s.Key, CA: s.CA, Log: slog.New(slog.DiscardHandler)}.ClientCredentials()
	if err != nil {
		return nil, usageError{fmt.Errorf("credentials: %w", err)}
	}
	cc, err := grpcclient.Dial("consoleauth", s.ConsoleAuth, creds, grpcclient.Options{
		Name: "consoleauth",
		Retry: []string{
			consoleauthv1.OperationsService_ListSessions_FullMethodName,
			consoleauthv1.OperationsService_GetStatus_FullMethodName,
		},
		DialOptions: []grpc.DialOption{
			// consoleauth says NOT_SERVING while etcd is down, which is
			// exactly when an operator asks for the status.
			grpc.WithDisableHealthCheck(),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxRecvBytes)),
		},
	})
	if err != nil {
		return nil, usageError{err}
	}
	return cc, nil
}

// exactArgs is cobra.ExactArgs naming what the argument is.
func exactArgs(what string) cobra.PositionalArgs {
	return func(_ *cobra.Command, args []string) error {
		if len(args) != 1 {
			return fmt.Errorf("want exactly one argument, %s; got %d", what, len(args))
		}
		return nil
	}
}

func fixedCompletion(words ...string) func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	return func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return words, cobra.ShellCompDirectiveNoFileComp
	}
}

// reasonFlag declares --reason with its codes' completion.
func reasonFlag(cmd *cobra.Command, p *string, def string) {
	cmd.Flags().StringVar(p, "reason", def, "why, as a code users see the sentence of: "+strings.Join(registry.RevocationCodes(), ", "))
	_ = cmd.RegisterFlagCompletionFunc("reason", fixedCompletion(registry.RevocationCodes()...))
}

func (a *app) status() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "The fleet on one screen: etcd members, compute agents, proxies, sessions",
		Args:  cobra.NoArgs,
		RunE: a.action(func(ctx context.Context, cc *grpc.ClientConn, _ []string) error {
			resp, err := consoleauthv1.NewOperationsServiceClient(cc).GetStatus(ctx, &consoleauthv1.GetStatusRequest{})
			if err != nil {
				return err
			}
			return a.print(resp, func(w io.Writer) { printStatus(w, resp) })
		}),
	}
}

func (a *app) sessionsList() *cobra.Command {
	var req consoleauthv1.ListSessionsRequest
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List live sessions across every proxy",
		Args:  cobra.NoArgs,
		RunE: a.action(func(ctx context.Context, cc *grpc.ClientConn, _ []string) error {
			if req.InstanceUuid != "" {
				uuid, err := registry.ParseInstanceUUID(req.InstanceUuid)
				if err != nil {
					return usageError{fmt.Errorf("--instance: %w", err)}
				}
				req.InstanceUuid = uuid
			}
			resp, err := consoleauthv1.NewOperationsServiceClient(cc).ListSessions(ctx, &req)
			if err != nil {
				return err
			}
			return a.print(resp, func(w io.Writer) { printSessions(w, resp.Sessions) })
		}),
	}
	cmd.Flags().StringVar(&req.InstanceUuid, "instance", "", "only the sessions of this instance (UUID)")
	cmd.Flags().StringVar(&req.Proxy, "proxy", "", "only the sessions on this proxy (its name)")
	cmd.Flags().StringVar(&req.ComputeHost, "host", "", "only the sessions of instances on this compute host")
	return cmd
}

func (a *app) sessionsKill() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "kill ID",
		Short: "End a live session on whichever proxy holds it; its user sees the reason's sentence",
		Args:  exactArgs("the session's ID (see sessions list)"),
		RunE: a.action(func(ctx context.Context, cc *grpc.ClientConn, args []string) error {
			resp, err := consoleauthv1.NewOperationsServiceClient(cc).KillSession(ctx,
				&consoleauthv1.KillSessionRequest{SessionId: args[0], Reason: reason})
			if err != nil {
				return err
			}
			s := resp.GetSession()
			if err := a.print(resp, func(w io.Writer) {
				if resp.Ended {
					fmt.Fprintf(w, "session %s on proxy %s ended (instance %s, reason %s)\n", s.GetId(), s.GetProxy(), s.GetInstanceUuid(), reasonOr(reason))
				}
			}); err != nil {
				return err
			}
			if !resp.Ended {
				return notEndedError{fmt.Sprintf("kill asked, but session %s on proxy %s had not ended when consoleauth answered (is the proxy alive?)",
					s.GetId(), s.GetProxy())}
			}
			return nil
		}),
	}
	reasonFlag(cmd, &reason, "admin")
	return cmd
}

func reasonOr(reason string) string {
	if reason == "" {
		return "admin"
	}
	return reason
}

func (a *app) tokensRevoke() *cobra.Command {
	var reason string
	cmd := &cobra.Command{
		Use:   "revoke INSTANCE",
		Short: "Revoke every console token of an instance and end its live sessions",
		Args:  exactArgs("the instance's UUID"),
		RunE: a.action(func(ctx context.Context, cc *grpc.ClientConn, args []string) error {
			uuid, err := registry.ParseInstanceUUID(args[0])
			if err != nil {
				return usageError{fmt.Errorf("instance: %w", err)}
			}
			resp, err := consoleauthv1.NewConsoleAuthServiceClient(cc).RevokeInstanceTokens(ctx,
				&consoleauthv1.RevokeInstanceTokensRequest{InstanceUuid: uuid, Reason: reason})
			if err != nil {
				return err
			}
			return a.print(resp, func(w io.Writer) {
				fmt.Fprintf(w, "revoked %d token(s) of instance %s (reason %s); its live sessions end\n", resp.RevokedCount, uuid, reasonOr(reason))
			})
		}),
	}
	reasonFlag(cmd, &reason, "admin")
	return cmd
}

func (a *app) proxyDrain() *cobra.Command {
	var deadline time.Duration
	cmd := &cobra.Command{
		Use:   "drain NAME",
		Short: "Drain a proxy: readiness red, no new sessions, live ones end at the deadline",
		Args:  exactArgs("the proxy's name (see status)"),
		RunE: a.action(func(ctx context.Context, cc *grpc.ClientConn, args []string) error {
			if deadline < 0 || deadline%time.Second != 0 || deadline > 24*time.Hour {
				return usageError{fmt.Errorf("--deadline %v: want whole seconds from 0 (consoleauth's drain_timeout) to 24h", deadline)}
			}
			resp, err := consoleauthv1.NewOperationsServiceClient(cc).DrainProxy(ctx,
				&consoleauthv1.DrainProxyRequest{Proxy: args[0], DeadlineSeconds: int32(deadline / time.Second)})
			if err != nil {
				return err
			}
			return a.print(resp, func(w io.Writer) {
				fmt.Fprintf(w, "proxy %s draining: its %d live session(s) end at %s\n", resp.Proxy, resp.Sessions,
					resp.Deadline.AsTime().Local().Format(time.RFC3339))
			})
		}),
	}
	cmd.Flags().DurationVar(&deadline, "deadline", 0, "how long live sessions may go on (e.g. 30s); 0: consoleauth's drain_timeout")
	return cmd
}

// print writes m as JSON, or as table draws it.
func (a *app) print(m proto.Message, table func(io.Writer)) error {
	if a.settings.Output == "json" {
		return printJSON(a.out, m)
	}
	table(a.out)
	return nil
}
