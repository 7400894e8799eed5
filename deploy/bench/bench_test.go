package bench

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"testing"
	"text/tabwriter"
	"time"
)

// Targets (DESIGN.md, "Targets").
const (
	targetNoVNCVsBase   = 0.70                 // novnc-proxy throughput / plain relay
	targetXVPVsBase     = 0.90                 // xvp-proxy throughput / plain relay
	targetSetupP99      = 5 * time.Millisecond // novnc-proxy session setup p99
	targetIdleKiB       = 64                   // resident memory per idle session
	targetURLsPerSecond = 2000                 // GetConsoleURL against one embedded etcd
	targetSetupVsBase   = 3.0                  // session setup p99 / plain relay's (issue 11)
	targetCheckVsGet    = 2.0                  // CheckToken p50 / one etcd Get p50 (issue 11)
	targetMintVsTxn     = 0.5                  // GetConsoleURL rate / raw etcd txn rate, 1 and 3 members (issue 11)
	targetStormBack     = 10 * time.Second     // a reconnect storm all back within (issue 11)
	wantFileLimit       = 1 << 18              // open files for this process and the services
)

// BenchmarkConsoleStack runs every measurement of `make bench` once, each on
// its own stack of services, and prints one table. Run it with -benchtime 1x.
func BenchmarkConsoleStack(b *testing.B) {
	limit, err := raiseFileLimit(wantFileLimit)
	if err != nil {
		b.Fatalf("open-file limit: %v", err)
	}
	rep := &report{started: time.Now(), fileLimit: limit, loadBefore: loadAverage()}
	b.Run("relay", func(b *testing.B) { rep.relay = benchRelay(b) })
	b.Run("setup", func(b *testing.B) { rep.setup = benchSetup(b) })
	b.Run("setup-vencrypt", func(b *testing.B) { rep.vencryptSetup = benchVeNCryptSetup(b) })
	b.Run("authz", func(b *testing.B) { rep.authz = benchAuthz(b) })
	b.Run("mint", func(b *testing.B) { rep.mint = benchMint(b) })
	b.Run("mint-3-members", func(b *testing.B) { rep.mintCluster = benchMintCluster(b) })
	b.Run("idle-memory", func(b *testing.B) { rep.memory = benchIdleMemory(b, limit) })
	b.Run("storm", func(b *testing.B) { rep.storm = benchStorm(b, limit) })
	rep.elapsed = time.Since(rep.started)
	rep.loadAfter = loadAverage()
	rep.print(os.Stdout)
}

// report is everything measured; a nil section was not measured (its
// sub-benchmark failed and said why).
type report struct {
	started   time.Time
	elapsed   time.Duration
	fileLimit uint64
	// loadBefore and loadAfter are the machine's load averages: on a
	// shared machine, other work shows in them and in the figures.
	loadBefore, loadAfter string
	relay                 *relayResult
	setup                 *setupResult
	vencryptSetup         *setupResult // vencrypt_test.go
	authz                 *authzResult // authz_test.go
	mint                  *mintResult
	mintCluster           *mintResult  // cluster_test.go: on a 3-member etcd
	storm                 *stormResult // storm_test.go
	memory                *memoryResult
}

// verdict says whether a target was met.
func verdict(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISSED"
}

// loadAverage is the 1, 5 and 15 minute load averages.
func loadAverage() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	if f := strings.Fields(string(raw)); len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "?"
}

func cpuModel() string {
	raw, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "?"
	}
	for line := range strings.SplitSeq(string(raw), "\n") {
		if name, value, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(name) == "model name" {
			return strings.TrimSpace(value)
		}
	}
	return "?"
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

func mib(kib int64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }

// thousands formats n with comma separators.
func thousands(n int) string {
	s := fmt.Sprint(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

func (r *report) print(out io.Writer) {
	var sb strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	table := func(write func(tw *tabwriter.Writer)) {
		tw := tabwriter.NewWriter(&sb, 0, 0, 2, ' ', 0)
		write(tw)
		tw.Flush()
	}
	rule := strings.Repeat("=", 110)

	p("\n%s\nvncgate make bench: %s, %d CPUs (%s), %s %s/%s, took %s\n", rule,
		r.started.UTC().Format("2006-01-02 15:04 UTC"), runtime.NumCPU(), cpuModel(), runtime.Version(), runtime.GOOS, runtime.GOARCH,
		r.elapsed.Round(time.Second))
	p("Services as separate processes on 127.0.0.1 (deploy/devstack); ratios are against baselines measured in this run.\n")
	p("Load average before: %s, after: %s. Open-file limit of this process and the services it starts: %d.\n",
		r.loadBefore, r.loadAfter, r.fileLimit)

	p("\n1. Relay throughput, MB/s (10^6 B/s): median of %d interleaved rounds (%d-%d MiB each, a fresh session per round);\n",
		relayRounds, minRoundBytes>>20, maxRoundBytes>>20)
	p("   \"vs base\" is the median of the per-round ratios to the baseline, measured seconds apart in the same round.\n")
	if r.relay == nil {
		p("   not measured: the relay sub-benchmark failed (see above) or -bench left it out.\n")
	} else {
		r.printRelay(p, table)
	}

	p("\n2. Session setup to the first RFB byte from the demo RFB server: %d sequential sessions per path, interleaved.\n", setupSessions)
	if r.setup == nil {
		p("   not measured: the setup sub-benchmark failed (see above) or -bench left it out.\n")
	} else {
		base := r.setup.paths[0]
		table(func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "   path\tp50\tp99\tmax\tmean\tp50 vs base\tp99 vs base\ttarget\t")
			for _, f := range r.setup.paths {
				target := ""
				if f.name == pathNoVNC {
					target = fmt.Sprintf("p99 <= %v: %s", targetSetupP99, verdict(f.p99 <= targetSetupP99))
				}
				fmt.Fprintf(tw, "   %s\t%s\t%s\t%s\t%s\t%.1fx\t%.1fx\t%s\t\n", f.name, ms(f.p50), ms(f.p99), ms(f.max), ms(f.mean),
					float64(f.p50)/float64(base.p50), float64(f.p99)/float64(base.p99), target)
			}
		})
		p("   novnc-proxy: TCP connect, HTTP upgrade, CheckToken, dial, first message. xvp-proxy: TCP connect, CONNECT head,\n")
		p("   CheckToken, dial, 200, first byte. Baseline: TCP connect, dial, first byte. Steps, timed alone from this process:\n")
		p("   The lean client (leanws_test.go) sends the upgrade request and reads frames with next to no work of its own, as the\n")
		p("   baseline's client does; the coder/websocket row adds that library's client to the same path.\n")
		p("   Every session and check has a token of its own, minted before the measurement. CheckToken is what both proxies\n")
		p("   ask consoleauth: the token's record from consoleauth's watched copy of them (an etcd read when not there yet), the\n")
		p("   instance's console from its agent's published claim; the etcd Get is one linearizable read of a token record.\n")
		r.printSetupTargets(p)
	}
	r.printVeNCryptSetup(p, table) // vencrypt_test.go
	if r.authz == nil {
		p("\n2c. Authorisation: not measured: the authz sub-benchmark failed (see above) or -bench left it out.\n")
	} else {
		r.printAuthz(p, table) // authz_test.go
	}

	p("\n3. GetConsoleURL rate: %d concurrent clients, median of %d rounds of %v, against the single embedded etcd and against\n",
		mintClients, mintRounds, mintRound)
	p("   a %d-member etcd cluster (each member a process of its own, testkit/etcd); \"vs etcd txn\" is against the txn rate on the same etcd.\n",
		clusterMembers)
	if r.mint == nil && r.mintCluster == nil {
		p("   not measured: the mint sub-benchmarks failed (see above) or -bench left them out.\n")
	} else {
		table(func(tw *tabwriter.Writer) {
			fmt.Fprintln(tw, "   etcd\tway\tper second\t(rounds min-max)\tvs etcd txn\ttarget\t")
			printMintRows(tw, "1 member", r.mint, true)
			printMintRows(tw, fmt.Sprintf("%d members", clusterMembers), r.mintCluster, false)
		})
		p("   A mint: REST/gRPC edge, compute agent GetConsole (gRPC), one etcd txn (guarded put of the token record and its\n")
		p("   instance index entry on a shared lease). The etcd row sends that txn straight from this process. The single member\n")
		p("   is devstack's, embedded in this process; the rate target is set for it.\n")
	}
	p("\n4. Memory per idle session: growth of the proxy's VmRSS (/proc/PID/status) over a reading with no session (taken\n")
	p("   after %d warm-up sessions), divided by the sessions. Each session exchanged RFB versions both ways, then idles;\n", idleWarmup)
	p("   novnc clients answer the proxy's pings. Readings %v after the last session opened.\n", idleSettle)
	if r.memory == nil {
		p("   not measured: the idle-memory sub-benchmark failed (see above) or -bench left it out.\n")
	} else {
		r.printMemory(p, table)
	}

	p("\n5. Reconnect storm on xvp-proxy: sessions open, the proxy restarted on the same port (SIGTERM with shutdown_delay=0\n")
	p("   and drain_timeout=%ds, then a new process), and once every client saw its session end, all reconnect at once with\n", stormDrain)
	p("   their (multi-use) tokens from %d loopback addresses (max_connections_per_client=0, max_connections=0). Its stack:\n", clientAddrs)
	p("   consoleauth and the agent as devstack runs them, on an etcd in a process of its own (not sharing this one's CPU).\n")
	if r.storm == nil {
		p("   not measured: the storm sub-benchmark failed (see above) or -bench left it out.\n")
	} else {
		r.storm.printStorm(p)
	}
	r.printIssue11(p, table)
	p("%s\n", rule)
	io.WriteString(out, sb.String())
}

func (r *report) printRelay(p func(string, ...any), table func(func(*tabwriter.Writer))) {
	targets := map[string]float64{pathNoVNC: targetNoVNCVsBase, pathXVP: targetXVPVsBase}
	table(func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "   path\tserver->client\tvs base\t(rounds)\tclient->server\tvs base\t(rounds)\ttarget\t")
		for _, f := range r.relay.paths {
			if f.note != "" {
				fmt.Fprintf(tw, "   %s\tnot measured: %s\t\t\t\t\t\t\t\n", f.name, f.note)
				continue
			}
			fmt.Fprintf(tw, "   %s", f.name)
			for _, dir := range []direction{down, up} {
				rounds := append([]float64(nil), f.rounds[dir]...)
				median(rounds) // sorts
				fmt.Fprintf(tw, "\t%.0f\t%.2f\t(%.0f-%.0f)", f.medianMBps[dir], f.vsBase[dir], rounds[0], rounds[len(rounds)-1])
			}
			if t, ok := targets[f.name]; ok {
				fmt.Fprintf(tw, "\t>= %.2f both ways: %s", t, verdict(f.vsBase[down] >= t && f.vsBase[up] >= t))
			} else {
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprintln(tw, "\t")
		}
	})
	if n, w := r.relay.find(pathNoVNC), r.relay.find(pathWebsockify); n != nil && w != nil {
		d, u := pairedRatio(n.rounds[down], w.rounds[down]), pairedRatio(n.rounds[up], w.rounds[up])
		p("   novnc-proxy / websockify: %.2fx server->client, %.2fx client->server; target ahead both ways: %s\n",
			d, u, verdict(d > 1 && u > 1))
	}
	r.relay.printVeNCrypt(p) // vencrypt_test.go
	if n, w := r.relay.find(pathNoVNCLean), r.relay.find(pathWebsockifyLean); n != nil && w != nil {
		p("   With the lean client: novnc-proxy / websockify %.2fx server->client, %.2fx client->server.\n",
			pairedRatio(n.rounds[down], w.rounds[down]), pairedRatio(n.rounds[up], w.rounds[up]))
	}
	p("   Lean client: leanws_test.go, one vectored write per 64 KiB frame, zero masking key, 64 KiB read buffer; it shows\n")
	p("   what a proxy does when the client costs next to nothing. The targets are judged with coder/websocket.\n")
	p("   CPU time per GB moved (ms per 10^9 B, all rounds). \"bench\" is this process: client and stream server, and for the\n")
	p("   baseline also its relay; xvp-proxy relays TCP to TCP in a process of its own (pkg/relay: pooled user-space copies, no splice).\n")
	table(func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "   path\tserver->client: relay\tbench\tclient->server: relay\tbench\tround size\t")
		for _, f := range r.relay.paths {
			if f.note != "" {
				continue
			}
			fmt.Fprintf(tw, "   %s", f.name)
			for _, dir := range []direction{down, up} {
				relay := fmt.Sprintf("%.0f", f.cpuPerGB(f.relayCPU[dir], dir))
				if f.inProcess {
					relay = "in bench"
				}
				fmt.Fprintf(tw, "\t%s\t%.0f", relay, f.cpuPerGB(f.benchCPU[dir], dir))
			}
			fmt.Fprintf(tw, "\t%d/%d MiB\t\n", f.roundBytes[down]>>20, f.roundBytes[up]>>20)
		}
	})
	if r.relay.websockify != "" {
		p("   %s (Debian package), run as `websockify ADDR TARGET`; its CPU includes the process it forks per connection.\n",
			r.relay.websockify)
	}
	p("   Clients: coder/websocket sending %d KiB binary messages (masked, as browsers do) and reading with a %d KiB buffer;\n",
		chunkBytes>>10, chunkBytes>>10)
	p("   raw TCP for the baseline and xvp-proxy. The baseline relay is io.Copy both ways (the kernel splices).\n")
}

func (r *report) printMemory(p func(string, ...any), table func(func(*tabwriter.Writer))) {
	table(func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "   proxy\tsessions\tVmRSS\tgrowth\tper session\tRssAnon per session\topen files\tfiles per session\tthreads\ttarget\t")
		for _, f := range r.memory.proxies {
			fmt.Fprintf(tw, "   %s\t0\t%s\t\t\t\t%d\t\t%d\t\t\n", f.name, mib(f.base.rssKiB), f.base.fds, f.base.threads)
			for _, pt := range f.points {
				per := perSessionKiB(f.base, pt)
				anon := float64(pt.anonKiB-f.base.anonKiB) / float64(pt.sessions)
				files := f.filesPerSession(pt)
				count := thousands(pt.sessions)
				if pt.requested != 0 {
					count += " (of " + thousands(pt.requested) + ")"
				}
				fmt.Fprintf(tw, "   %s\t%s\t%s\t%s\t%.1f KiB\t%.1f KiB\t%d\t%.1f\t%d\t<= %d KiB: %s\t\n", f.name, count,
					mib(pt.rssKiB), mib(pt.rssKiB-f.base.rssKiB), per, anon, pt.fds, files, pt.threads, targetIdleKiB,
					verdict(per <= targetIdleKiB))
			}
		}
	})
	for _, f := range r.memory.proxies {
		if n := len(f.points); n > 0 {
			p("   %s: open-file limit %d; %s sessions opened in %v, %d at a time.\n", f.name, f.fileLimit,
				thousands(f.points[n-1].sessions), f.openTime.Round(100*time.Millisecond), idleWorkers)
		}
		for _, note := range f.notes {
			p("   %s: NOT MEASURED at the full count: %s.\n", f.name, note)
		}
		if f.err != nil {
			p("   %s: FAILED: %v\n", f.name, f.err)
		}
	}
	if r.memory.fileLimit < wantFileLimit {
		p("   This machine's hard open-file limit is %d and this process may not raise it (no CAP_SYS_RESOURCE):\n", r.memory.fileLimit)
		p("   on a host allowing more (e.g. systemd LimitNOFILE=65536), the same run measures the full 10,000.\n")
	}
}

// printMintRows prints one etcd's rows of the mint table; res nil: not
// measured.
func printMintRows(tw *tabwriter.Writer, etcdName string, res *mintResult, withTarget bool) {
	if res == nil {
		fmt.Fprintf(tw, "   %s\tnot measured: its sub-benchmark failed (see above) or -bench left it out\t\t\t\t\t\n", etcdName)
		return
	}
	etcd := res.find(mintEtcd)
	for _, f := range res.ways {
		rounds := append([]float64(nil), f.rounds...)
		median(rounds)
		target := ""
		if withTarget && f.name != mintEtcd {
			target = fmt.Sprintf(">= %s/s: %s", thousands(targetURLsPerSecond), verdict(f.median >= targetURLsPerSecond))
		}
		fmt.Fprintf(tw, "   %s\t%s\t%.0f\t(%.0f-%.0f)\t%.2f\t%s\t\n", etcdName, f.name, f.median, rounds[0], rounds[len(rounds)-1],
			f.median/etcd.median, target)
	}
}

// printSetupTargets judges session setup against the plain relay and
// CheckToken against one etcd Get (issue 11).
func (r *report) printSetupTargets(p func(string, ...any)) {
	find := r.setupFigures
	base := find(pathBaseline)
	for _, name := range []string{pathNoVNC, pathNoVNCLean, pathXVP} {
		if f := find(name); f != nil && base != nil {
			ratio := float64(f.p99) / float64(base.p99)
			p("   %s setup p99 vs the plain relay's: %.1fx; target <= %.0fx: %s\n", name, ratio, targetSetupVsBase,
				verdict(ratio <= targetSetupVsBase))
		}
	}
	if c := find(partCheckToken); c != nil && base != nil {
		// What the check alone costs against the relay's whole session: a
		// proxy doing nothing but the relay's work and the check could not
		// go below 1 plus this.
		p("   CheckToken alone vs the plain relay's whole session: %.1fx at p50, %.1fx at p99; a proxy with no cost of its own\n"+
			"   besides the check would be near %.1fx at p50.\n",
			float64(c.p50)/float64(base.p50), float64(c.p99)/float64(base.p99), 1+float64(c.p50)/float64(base.p50))
	}
	if c, g := find(partCheckToken), find(partEtcdGet); c != nil && g != nil {
		ratio := float64(c.p50) / float64(g.p50)
		p("   CheckToken p50 vs one etcd Get p50 (same etcd): %.1fx; target <= %.0fx: %s\n", ratio, targetCheckVsGet,
			verdict(ratio <= targetCheckVsGet))
	}
}

// printIssue11 is issue 11's table: each of its targets measured above,
// with its verdict, in one place.
func (r *report) printIssue11(p func(string, ...any), table func(func(*tabwriter.Writer))) {
	p("\n6. Issue 11's targets, as measured above.\n")
	table(func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "   measure\tfigure\ttarget\tverdict\t")
		row := func(measure, figure, target string, ok bool) {
			fmt.Fprintf(tw, "   %s\t%s\t%s\t%s\t\n", measure, figure, target, verdict(ok))
		}
		missing := func(measure, target string) {
			fmt.Fprintf(tw, "   %s\tnot measured\t%s\t\t\n", measure, target)
		}

		stormTarget := fmt.Sprintf("all back within %v, no failure", targetStormBack)
		if s := r.storm; s != nil {
			figure := fmt.Sprintf("%s sessions (open-file limit %d), %s back, the last after %s, %d failed",
				thousands(s.sessions), s.fileLimit, thousands(s.sessions-s.failures), ms(s.allBack), s.failures)
			row("reconnect storm on xvp-proxy", figure, stormTarget, s.failures == 0 && s.allBack <= targetStormBack)
			if t := s.cpuBoundTime(); t > 0 {
				fmt.Fprintf(tw, "   storm on idle CPUs (estimate: CPU time per reconnect)\t%s sessions in %.1f s\t%s\t%s\t\n",
					thousands(s.sessions), t.Seconds(), stormTarget, verdict(t <= targetStormBack))
			}
		} else {
			missing("reconnect storm on xvp-proxy", stormTarget)
		}

		setupTarget := fmt.Sprintf("<= %.0fx", targetSetupVsBase)
		base, check, get := r.setupFigures(pathBaseline), r.setupFigures(partCheckToken), r.setupFigures(partEtcdGet)
		for _, name := range []string{pathNoVNC, pathNoVNCLean, pathXVP} {
			measure := "setup p99 / plain relay's: " + name
			if f := r.setupFigures(name); f != nil && base != nil {
				ratio := float64(f.p99) / float64(base.p99)
				row(measure, fmt.Sprintf("%.1fx (%s / %s)", ratio, ms(f.p99), ms(base.p99)), setupTarget, ratio <= targetSetupVsBase)
			} else {
				missing(measure, setupTarget)
			}
		}
		checkTarget := fmt.Sprintf("<= %.0fx", targetCheckVsGet)
		if check != nil && get != nil {
			ratio := float64(check.p50) / float64(get.p50)
			row("CheckToken p50 / one etcd Get p50", fmt.Sprintf("%.1fx (%s / %s)", ratio, ms(check.p50), ms(get.p50)), checkTarget,
				ratio <= targetCheckVsGet)
		} else {
			missing("CheckToken p50 / one etcd Get p50", checkTarget)
		}

		mintTarget := fmt.Sprintf(">= %.1f", targetMintVsTxn)
		for _, m := range []struct {
			etcd string
			res  *mintResult
		}{{"1 member", r.mint}, {fmt.Sprintf("%d members", clusterMembers), r.mintCluster}} {
			for _, way := range []string{mintREST, mintGRPC} {
				measure := fmt.Sprintf("%s rate / etcd txn rate, %s", way, m.etcd)
				var f, txn *mintFigures
				if m.res != nil {
					f, txn = m.res.find(way), m.res.find(mintEtcd)
				}
				if f == nil || txn == nil || txn.median == 0 {
					missing(measure, mintTarget)
					continue
				}
				ratio := f.median / txn.median
				row(measure, fmt.Sprintf("%.2f (%.0f/s / %.0f/s)", ratio, f.median, txn.median), mintTarget, ratio >= targetMintVsTxn)
			}
		}
	})
}

// setupFigures are the setup measurement's figures for path, or nil.
func (r *report) setupFigures(path string) *setupFigures {
	if r.setup == nil {
		return nil
	}
	for i := range r.setup.paths {
		if r.setup.paths[i].name == path {
			return &r.setup.paths[i]
		}
	}
	return nil
}
