package grafana

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vncgate/vncgate/deploy/devstack"
	"github.com/vncgate/vncgate/deploy/devstack/devstacktest"
	"github.com/vncgate/vncgate/pkg/requestid"
)

type dashboard struct {
	Title  string  `json:"title"`
	Panels []panel `json:"panels"`
}

type panel struct {
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
}

func load(t *testing.T) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(Dashboard, &d); err != nil {
		t.Fatalf("vncgate.json: %v", err)
	}
	return d
}

// promQL's words that are not metric names, and the pieces of a query that
// hold none: strings, label matchers, ranges, grouping lists.
var (
	keywords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true,
		"group_right": true, "bool": true, "and": true, "or": true, "unless": true, "offset": true}
	noNames    = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|\{[^}]*\}|\[[^\]]*\]|\b(?:by|without|on|ignoring)\s*\([^)]*\)`)
	identifier = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*\s*\(?`)
)

// metricNames returns the metric names expr selects.
func metricNames(expr string) []string {
	var names []string
	for _, m := range identifier.FindAllString(noNames.ReplaceAllString(expr, " "), -1) {
		if strings.HasSuffix(m, "(") || keywords[strings.TrimSpace(m)] {
			continue // a function or aggregation, or a keyword
		}
		names = append(names, strings.TrimSpace(m))
	}
	return names
}

func TestMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (result) (rate(vncgate_proxy_sessions_total{result!="relayed"}[$__rate_interval]))`:         {"vncgate_proxy_sessions_total"},
		`histogram_quantile(0.99, sum by (le, job) (rate(grpc_server_handling_seconds_bucket[5m])))`:        {"grpc_server_handling_seconds_bucket"},
		`sum by (job, check) (1 - vncgate_ready_check) > 0`:                                                 {"vncgate_ready_check"},
		`min by (instance) (vncgate_ready_check{job=~".*consoleauth.*", check="etcd"}) or on (instance) up`: {"vncgate_ready_check", "up"},
		`max by (job, instance, version, revision, goversion) (vncgate_build_info)`:                         {"vncgate_build_info"},
	} {
		if got := metricNames(expr); !slices.Equal(got, want) {
			t.Errorf("metricNames(%s): got %q, want %q", expr, got, want)
		}
	}
}

// TestDashboardIsWellFormed: every panel but rows queries something, and
// every query names a metric.
func TestDashboardIsWellFormed(t *testing.T) {
	d := load(t)
	if d.Title == "" || len(d.Panels) < 20 {
		t.Fatalf("got title %q and %d panels, want the dashboard", d.Title, len(d.Panels))
	}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if len(metricNames(tg.Expr)) == 0 {
				t.Errorf("panel %q: query %q names no metric", p.Title, tg.Expr)
			}
		}
	}
}

// TestDashboardMetricsAreExported starts the real services (the devstack
// world), makes a console URL through the REST API with a request id,
// follows that id through consoleauth's and the compute agent's logs, then
// scrapes every admin listener: each metric a panel queries must be
// exported by some service.
func TestDashboardMetricsAreExported(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the devstack world")
	}
	w := devstacktest.Start(t, devstack.Options{})
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	id := "dashboard-" + requestid.New()
	if got := mint(ctx, t, w, id); got != id {
		t.Errorf("X-Request-Id answered %q, want the one sent, %q", got, id)
	}
	if got := mint(ctx, t, w, "not a valid id"); got == "not a valid id" || !requestid.Valid(got) {
		t.Errorf("an invalid X-Request-Id: answered %q, want a new valid id", got)
	}
	t.Run("the request id is in the logs of consoleauth and the agent", func(t *testing.T) {
		waitForLine(ctx, t, w.LogPath(devstack.ConsoleAuth), id, "/vncgate.consoleauth.v1.ConsoleAuthService/GetConsoleURL")
		waitForLine(ctx, t, w.LogPath(devstack.ComputeAgent), id, "/vncgate.computeagent.v1.ComputeAgentService/GetConsole")
	})

	exported := map[string][]string{} // metric → services
	for service, port := range map[string]int{
		devstack.ConsoleAuth:  w.Ports.ConsoleAuthAdmin,
		devstack.ComputeAgent: w.Ports.ComputeAgentAdmin,
		devstack.NoVNCProxy:   w.Ports.NoVNCAdmin,
		devstack.XVPProxy:     w.Ports.XVPAdmin,
	} {
		names := scrape(ctx, t, "http://"+w.AdminAddr(port)+"/metrics")
		if !names["vncgate_build_info"] || !names["vncgate_ready"] {
			t.Errorf("%s: no vncgate_build_info or vncgate_ready on /metrics", service)
		}
		for n := range names {
			exported[n] = append(exported[n], service)
		}
	}
	checked := 0
	for _, p := range load(t).Panels {
		for _, tg := range p.Targets {
			for _, name := range metricNames(tg.Expr) {
				checked++
				if exported[name] == nil {
					t.Errorf("panel %q queries %s, which no service exports", p.Title, name)
				}
			}
		}
	}
	t.Logf("%d metric references in the dashboard, %d metric names exported", checked, len(exported))
}

// mint asks consoleauth's REST API for the demo instance's console with
// X-Request-Id id and returns the X-Request-Id answered.
func mint(ctx context.Context, t *testing.T, w *devstack.World, id string) string {
	t.Helper()
	body := `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`
	u := w.RESTURL() + "/v2.1/servers/" + url.PathEscape(devstack.DemoUUID) + "/remote-consoles"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set(requestid.Header, id)
	resp, err := w.RESTClient().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("remote-consoles: %s: %s", resp.Status, raw)
	}
	return resp.Header.Get(requestid.Header)
}

// waitForLine waits until the JSON log at path has an rpc line of method
// with request id id.
func waitForLine(ctx context.Context, t *testing.T, path, id, method string) {
	t.Helper()
	for {
		if found, err := hasLine(path, id, method); err != nil {
			t.Fatal(err)
		} else if found {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: no rpc line of %s with request_id %s", path, method, id)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func hasLine(path, id, method string) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if json.Unmarshal(sc.Bytes(), &rec) != nil {
			continue
		}
		if rec["msg"] == "rpc" && rec["request_id"] == id && rec["method"] == method {
			return true, nil
		}
	}
	return false, sc.Err()
}

// scrape returns the sample names (histograms as _bucket, _sum, _count) a
// /metrics page exports.
func scrape(ctx context.Context, t *testing.T, u string) map[string]bool {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("%s: %s", u, resp.Status)
	}
	names := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, _, _ := strings.Cut(line, " ")
		name, _, _ = strings.Cut(name, "{")
		names[name] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(fmt.Errorf("%s: %w", u, err))
	}
	return names
}
