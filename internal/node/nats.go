package node

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/schemas"
)

// StartNATS starts the embedded NATS server with JetStream of `udpgate
// run`: on cfg.NATSListen, its store in cfg.DataDir.
func StartNATS(cfg config.Config) (*server.Server, error) {
	// Bind once ourselves: nats-server reports a busy port only in its log.
	probe, err := net.Listen("tcp", cfg.NATSListen.String())
	if err != nil {
		return nil, fmt.Errorf("embedded NATS cannot listen on %s (set UDPGATE_NATS_LISTEN): %w", cfg.NATSListen, err)
	}
	probe.Close()
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("UDPGATE_DATA_DIR %q: %w", cfg.DataDir, err)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("UDPGATE_DATA_DIR: %w", err)
	}
	ns, err := server.NewServer(&server.Options{
		ServerName: "udpgate-" + schemas.EscapeToken(cfg.Node),
		Host:       cfg.NATSListen.Addr().String(),
		Port:       natsPort(cfg.NATSListen.Port()),
		JetStream:  true,
		StoreDir:   dir,
		NoSigs:     true,
		NoLog:      true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded NATS on %s did not start within 30s (is %s usable?)", cfg.NATSListen, dir)
	}
	return ns, nil
}

// natsPort maps port 0 (any free port) to nats-server's RANDOM_PORT; its
// own 0 means 4222.
func natsPort(p uint16) int {
	if p == 0 {
		return server.RANDOM_PORT
	}
	return int(p)
}

// Connect connects to cfg.NATSURL for a production process, with the
// credentials and TLS settings of cfg.NATSAuth. It fails at once, naming
// the URL and the variables to check, if no server answers or the server
// refuses it; after that it reconnects forever.
func Connect(cfg config.Config, name string) (*nats.Conn, error) {
	opts, err := cfg.NATSAuth.Options()
	if err != nil {
		return nil, err
	}
	opts = append(opts,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectBufSize(-1), // publishing while disconnected fails at once instead of queueing
	)
	nc, err := nats.Connect(string(cfg.NATSURL), opts...)
	if err != nil {
		if hint := cfg.NATSAuth.Refusal(string(cfg.NATSURL), err); hint != "" {
			return nil, fmt.Errorf("cannot connect to NATS at %s (%s): %w: %s", cfg.NATSURL, cfg.NATSURLVariable, err, hint)
		}
		return nil, fmt.Errorf("cannot connect to NATS at %s (%s): %w", cfg.NATSURL, cfg.NATSURLVariable, err)
	}
	return nc, nil
}

// ConnectJetStream is Connect, then a JetStream context on the
// connection. On an error the connection is closed.
func ConnectJetStream(cfg config.Config, name string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := Connect(cfg, name)
	if err != nil {
		return nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}
