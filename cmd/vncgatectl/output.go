package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
)

// printJSON writes m as consoleauth's REST API would: proto field names,
// every field present.
func printJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true, Multiline: true, Indent: "  "}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

func printStatus(w io.Writer, st *consoleauthv1.GetStatusResponse) {
	health := "healthy"
	if !st.EtcdHealthy {
		health = "UNHEALTHY (no linearizable read: quorum lost or unreachable)"
	}
	fmt.Fprintf(w, "ETCD %s, %d member(s)\n", health, len(st.EtcdMembers))
	t := table(w)
	fmt.Fprintln(t, "  MEMBER\tENDPOINT\tHEALTH\tLEADER\tDB SIZE")
	for _, m := range st.EtcdMembers {
		h := "healthy"
		if !m.Healthy {
			h = "unhealthy: " + m.Error
		}
		fmt.Fprintf(t, "  %s\t%s\t%s\t%s\t%s\n", orDash(m.Name), m.Endpoint, h, yes(m.Leader), bytesText(m.DbSizeBytes))
	}
	t.Flush()

	fmt.Fprintf(w, "\nAGENTS %d\n", len(st.Agents))
	if len(st.Agents) > 0 {
		t = table(w)
		fmt.Fprintln(t, "  HOST\tADDRESS\tINSTANCES")
		for _, a := range st.Agents {
			fmt.Fprintf(t, "  %s\t%s\t%d\n", a.Host, a.Address, a.Instances)
		}
		t.Flush()
	}

	fmt.Fprintf(w, "\nPROXIES %d\n", len(st.Proxies))
	if len(st.Proxies) > 0 {
		t = table(w)
		fmt.Fprintln(t, "  NAME\tTYPE\tADDRESS\tSESSIONS\tSTATE\tSTARTED")
		for _, p := range st.Proxies {
			state := "serving"
			if p.Draining {
				state = "draining until " + timeText(p.DrainDeadline)
			}
			fmt.Fprintf(t, "  %s\t%s\t%s\t%d\t%s\t%s\n", p.Name, p.ConsoleType, p.Address, p.Sessions, state, timeText(p.Started))
		}
		t.Flush()
	}
	fmt.Fprintf(w, "\nSESSIONS %d live\n", st.Sessions)
}

func printSessions(w io.Writer, sessions []*consoleauthv1.LiveSession) {
	if len(sessions) == 0 {
		fmt.Fprintln(w, "no live sessions")
		return
	}
	t := table(w)
	fmt.Fprintln(t, "ID\tPROXY\tTYPE\tINSTANCE\tHOST\tCLIENT\tSTARTED\tTO CLIENT\tTO SERVER\tMINTED BY")
	for _, s := range sessions {
		fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Id, s.Proxy, s.ConsoleType, s.InstanceUuid,
			orDash(s.ComputeHost), orDash(s.Client), timeText(s.Started), bytesText(s.BytesToClient), bytesText(s.BytesToServer), orDash(s.MintedBy))
	}
	t.Flush()
}

func timeText(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return "-"
	}
	return ts.AsTime().Local().Format(time.RFC3339)
}

func bytesText(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
