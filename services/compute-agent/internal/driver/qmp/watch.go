package qmp

import (
	"context"
	"sync"

	"github.com/vncgate/vncgate/services/compute-agent/internal/driver"
)

// Watch reports the lifecycle events of every configured instance (see
// monitor.run for which QMP happenings become which events) from now until
// ctx ends; the channel is closed only then. Events are queued per watcher,
// without bound and in order, so a slow reader delays nobody and loses
// nothing.
func (d *Driver) Watch(ctx context.Context) <-chan driver.Event {
	s := &subscriber{signal: make(chan struct{}, 1)}
	d.fan.add(s)
	out := make(chan driver.Event, 16)
	go func() {
		defer close(out)
		defer d.fan.remove(s)
		for {
			for _, ev := range s.take() {
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			}
			select {
			case <-s.signal:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out
}

// fanout hands every event to every watcher.
type fanout struct {
	mu   sync.Mutex
	subs map[*subscriber]struct{}
}

func (f *fanout) add(s *subscriber) {
	f.mu.Lock()
	f.subs[s] = struct{}{}
	f.mu.Unlock()
}

func (f *fanout) remove(s *subscriber) {
	f.mu.Lock()
	delete(f.subs, s)
	f.mu.Unlock()
}

func (f *fanout) publish(ev driver.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for s := range f.subs {
		s.push(ev)
	}
}

// subscriber is one watcher's queue.
type subscriber struct {
	mu     sync.Mutex
	queue  []driver.Event
	signal chan struct{} // one slot: something was queued
}

func (s *subscriber) push(ev driver.Event) {
	s.mu.Lock()
	s.queue = append(s.queue, ev)
	s.mu.Unlock()
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

func (s *subscriber) take() []driver.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	q := s.queue
	s.queue = nil
	return q
}
