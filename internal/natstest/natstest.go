// Package natstest runs a real embedded NATS server with JetStream for tests:
// a random port on loopback and a temporary store directory, shut down when
// the test ends. It is the JetStream counterpart of net/http/httptest.
package natstest

import (
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// RunServer starts a NATS server with JetStream on 127.0.0.1 with a random
// port and a store in t.TempDir(). The server is shut down by t.Cleanup.
func RunServer(t testing.TB) *server.Server {
	t.Helper()
	return Start(t, Options(t))
}

// Options returns the options of RunServer's server: JetStream on
// 127.0.0.1, a random port and a store in t.TempDir().
func Options(t testing.TB) *server.Options {
	t.Helper()
	return &server.Options{
		ServerName: "natstest",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   t.TempDir(),
		NoLog:      true,
		NoSigs:     true,
	}
}

// Start starts a NATS server with opts and waits until it accepts
// clients. The server is shut down by t.Cleanup.
func Start(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("natstest: new server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		t.Fatalf("natstest: server not ready after 10s")
	}
	t.Cleanup(func() {
		s.Shutdown()
		s.WaitForShutdown()
	})
	return s
}

// Restart shuts s down (if it still runs), started with opts, and starts a
// server with the same options on the same port and store, as a NATS
// server that comes back after an outage. Clients that reconnect find it.
func Restart(t testing.TB, s *server.Server, opts *server.Options) *server.Server {
	t.Helper()
	u, err := url.Parse(s.ClientURL())
	if err != nil {
		t.Fatalf("natstest: restart: %v", err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil || port <= 0 {
		t.Fatalf("natstest: restart: no port in %s", s.ClientURL())
	}
	s.Shutdown()
	s.WaitForShutdown()
	again := *opts
	again.Port = port
	return Start(t, &again)
}

// Connect opens a client connection to s, closed by t.Cleanup.
func Connect(t testing.TB, s *server.Server, opts ...nats.Option) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL(), opts...)
	if err != nil {
		t.Fatalf("natstest: connect %s: %v", s.ClientURL(), err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// JetStream returns a JetStream context on a new connection to s.
func JetStream(t testing.TB, s *server.Server) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc := Connect(t, s)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("natstest: jetstream: %v", err)
	}
	return nc, js
}
