package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/vncgate/vncgate/deploy/devstack"
	consoleauthv1 "github.com/vncgate/vncgate/pkg/api/consoleauth/v1"
	"github.com/vncgate/vncgate/pkg/authn"
)

const (
	mintClients = 32              // concurrent callers
	mintRounds  = 3               // rounds per way; the median is reported
	mintRound   = 1 * time.Second // length of a round
)

// Ways of minting, as printed.
const (
	mintREST = "GetConsoleURL over REST (grpc-gateway)"
	mintGRPC = "GetConsoleURL over gRPC"
	mintEtcd = "etcd txn alone (baseline: a mint's write)"
)

// mintFigures are one way's rates.
type mintFigures struct {
	name   string
	rounds []float64 // per second
	median float64
}

type mintResult struct {
	clients int
	ways    []*mintFigures
}

func (r *mintResult) find(name string) *mintFigures {
	for _, f := range r.ways {
		if f.name == name {
			return f
		}
	}
	return nil
}

// rate runs call from mintClients goroutines for d and returns successful
// calls per second, or the first error.
func rate(d time.Duration, call func(ctx context.Context) error) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	var ok atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range mintClients {
		wg.Go(func() {
			for ctx.Err() == nil {
				cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := call(cctx)
				ccancel()
				if err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return 0, firstErr
	}
	return float64(ok.Load()) / time.Since(start).Seconds(), nil
}

// benchMint measures how many console URLs consoleauth mints per second
// against the single embedded etcd, through REST and gRPC, and the rate of
// the etcd transaction a mint writes, issued directly, as the ceiling.
func benchMint(b *testing.B) *mintResult {
	w := startStack(b)
	res := measureMint(b, w, w.Client)
	b.ReportMetric(res.find(mintREST).median, "rest-urls/s")
	b.ReportMetric(res.find(mintGRPC).median, "grpc-urls/s")
	b.ReportMetric(res.find(mintEtcd).median, "etcd-txn/s")
	return res
}

// measureMint times the three ways of minting against w's consoleauth,
// the baseline's transactions going to etcd through cli: the etcd
// consoleauth writes to.
func measureMint(b *testing.B, w *devstack.World, cli *clientv3.Client) *mintResult {
	b.Helper()
	// REST, as a cloud's API layer calls it: keep-alive connections.
	transport := &http.Transport{MaxIdleConnsPerHost: mintClients, MaxConnsPerHost: mintClients}
	b.Cleanup(transport.CloseIdleConnections)
	httpc := &http.Client{Transport: transport}
	restURL := w.RESTURL() + "/v2.1/servers/" + url.PathEscape(devstack.DemoUUID) + "/remote-consoles"
	const body = `{"remote_console": {"protocol": "vnc", "type": "novnc"}}`
	rest := func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, restURL, strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Authorization", "Bearer "+w.APIKey)
		resp, err := httpc.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(raw), "token") {
			return fmt.Errorf("REST: %s: %s", resp.Status, raw)
		}
		return nil
	}

	ca := consoleauthv1.NewConsoleAuthServiceClient(grpcAs(b, w, w.Addr(w.Ports.ConsoleAuthGRPC), authn.RoleAPI, "bench-api"))
	grpcCall := func(ctx context.Context) error {
		resp, err := ca.GetConsoleURL(ctx, &consoleauthv1.GetConsoleURLRequest{
			ServerId:      devstack.DemoUUID,
			RemoteConsole: &consoleauthv1.RemoteConsole{Protocol: "vnc", Type: "novnc"},
		})
		if err != nil {
			return fmt.Errorf("gRPC: %w", err)
		}
		if !strings.Contains(resp.GetRemoteConsole().GetUrl(), "token") {
			return fmt.Errorf("gRPC: no token in %q", resp.GetRemoteConsole().GetUrl())
		}
		return nil
	}

	// The baseline: the transaction consoleauth's token store commits per
	// mint (a guarded create of the token record and its instance index
	// entry, on a shared lease), sent straight to etcd from this process.
	grant, err := cli.Grant(context.Background(), 600)
	if err != nil {
		b.Fatal(err)
	}
	record := strings.Repeat("x", 256) // about a token record's JSON size
	etcdTxn := func(ctx context.Context) error {
		var id [32]byte
		rand.Read(id[:])
		key := "/vncgate-bench/tokens/" + hex.EncodeToString(id[:])
		resp, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(
				clientv3.OpPut(key, record, clientv3.WithLease(grant.ID)),
				clientv3.OpPut("/vncgate-bench/instances/"+devstack.DemoUUID+"/"+hex.EncodeToString(id[:]), "", clientv3.WithLease(grant.ID)),
			).Commit()
		if err != nil {
			return fmt.Errorf("etcd: %w", err)
		}
		if !resp.Succeeded {
			return fmt.Errorf("etcd: key exists")
		}
		return nil
	}

	ways := []struct {
		name string
		call func(context.Context) error
	}{{mintREST, rest}, {mintGRPC, grpcCall}, {mintEtcd, etcdTxn}}
	res := &mintResult{clients: mintClients}
	for _, way := range ways {
		res.ways = append(res.ways, &mintFigures{name: way.name})
		if _, err := rate(200*time.Millisecond, way.call); err != nil { // warm-up
			b.Fatal(err)
		}
	}
	for range mintRounds {
		for i, way := range ways {
			r, err := rate(mintRound, way.call)
			if err != nil {
				b.Fatal(err)
			}
			res.ways[i].rounds = append(res.ways[i].rounds, r)
		}
	}
	for _, f := range res.ways {
		f.median = median(append([]float64(nil), f.rounds...))
	}
	return res
}
