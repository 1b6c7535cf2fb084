//go:build unix

package workers_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/workers"
)

// interrupt sends SIGINT to the test process, as Ctrl-C does to a worker.
// The test's own registration for SIGINT, made first, keeps the signal
// from killing the process if nothing else catches it.
func interrupt(t *testing.T) {
	t.Helper()
	if err := syscall.Kill(os.Getpid(), syscall.SIGINT); err != nil {
		t.Fatalf("kill: %v", err)
	}
}

// catchInterrupt registers the test for SIGINT until it ends, so that the
// SIGINT it sends never kills the test process.
func catchInterrupt(t *testing.T) {
	t.Helper()
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGINT)
	t.Cleanup(func() { signal.Stop(c) })
}

// TestListenAndServe starts a worker with the one-call start, connected
// through UDPGATE_NATS_URL, sends it a core NATS request, and stops it
// with SIGINT.
func TestListenAndServe(t *testing.T) {
	catchInterrupt(t)
	srv := natstest.RunServer(t)
	t.Setenv("UDPGATE_NATS_URL", srv.ClientURL())
	done := make(chan error, 1)
	go func() {
		done <- workers.ListenAndServe(subject, "upper", workers.HandlerFunc(
			func(_ context.Context, w workers.ResponseWriter, r *workers.Request) error {
				_, err := w.Write(bytes.ToUpper(r.Body))
				return err
			}))
	}()
	nc := natstest.Connect(t, srv)
	var reply *nats.Msg
	poll(t, "the worker answers", func() bool {
		var err error
		reply, err = nc.Request(subject, []byte("hello"), waitFor)
		if err != nil && !errors.Is(err, nats.ErrNoResponders) {
			t.Fatalf("request: %v", err)
		}
		return err == nil
	})
	if got := string(reply.Data); got != "HELLO" {
		t.Errorf("reply %q, want HELLO", got)
	}

	interrupt(t)
	select {
	case err := <-done:
		if !errors.Is(err, workers.ErrStopped) {
			t.Errorf("ListenAndServe = %v, want ErrStopped", err)
		}
	case <-time.After(waitFor):
		t.Fatal("ListenAndServe did not return after SIGINT")
	}
	poll(t, "the worker gone", func() bool {
		_, err := nc.Request(subject, []byte("hello"), waitFor)
		return errors.Is(err, nats.ErrNoResponders)
	})
}

// TestServerListenAndServe runs a configured Server (Durable, on a
// connection of its own) with ListenAndServe until SIGINT: it uses the
// connection and leaves it open.
func TestServerListenAndServe(t *testing.T) {
	catchInterrupt(t)
	e := newEnv(t)
	nc := e.conn(t)
	s := &workers.Server{
		NATS: nc, Delivery: workers.Durable, Group: "g", Subjects: []string{subject}, Handler: reply("durable"),
		Log: slog.New(slog.DiscardHandler),
	}
	done := make(chan error, 1)
	go func() { done <- s.ListenAndServe() }()
	waitReady(t, s)
	e.send(t, "r1", "")
	if m := e.next(t); replyID(m) != "r1" || string(m.Data) != "durable" {
		t.Errorf("reply to %s %q, want r1 durable", replyID(m), m.Data)
	}
	interrupt(t)
	select {
	case err := <-done:
		if !errors.Is(err, workers.ErrStopped) {
			t.Errorf("ListenAndServe = %v, want ErrStopped", err)
		}
	case <-time.After(waitFor):
		t.Fatal("ListenAndServe did not return after SIGINT")
	}
	if nc.IsClosed() {
		t.Error("ListenAndServe closed the Server's own connection")
	}
}

// TestListenAndServeConnectError: a worker that cannot connect says where
// it tried, without the credentials in the URLs.
func TestListenAndServeConnectError(t *testing.T) {
	// Two addresses where nothing listens.
	var urls []string
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		urls = append(urls, l.Addr().String())
		l.Close()
	}
	t.Setenv("UDPGATE_NATS_URL", "nats://worker:s3cret@"+urls[0]+",nats://token@"+urls[1])
	err := workers.ListenAndServe(subject, "g", reply("x"))
	if err == nil {
		t.Fatal("ListenAndServe = nil, want a connect error")
	}
	want := "workers: connect to nats://" + urls[0] + ",nats://" + urls[1] + ": "
	if !strings.HasPrefix(err.Error(), want) || strings.Contains(err.Error(), "s3cret") || strings.Contains(err.Error(), "token") {
		t.Errorf("ListenAndServe = %q, want prefix %q and no credentials", err, want)
	}
}
