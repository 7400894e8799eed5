package etcd

import (
	"context"
	"testing"
	"time"
)

func TestStopRestartKeepsData(t *testing.T) {
	s, cli := Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}

	s.Stop()
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err := cli.Get(short, "k")
	cancelShort()
	if err == nil {
		t.Fatal("get while stopped: got nil error, want one")
	}

	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("after restart: got %v, want k=v", resp.Kvs)
	}
}

func TestStopTwiceAndRestartStopped(t *testing.T) {
	s := New(t, "127.0.0.1:0")
	s.Stop()
	s.Stop()
	if err := s.Restart(); err != nil {
		t.Fatal(err)
	}
}
