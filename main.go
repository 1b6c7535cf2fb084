// Command udpgate is a UDP API gateway on NATS JetStream: clients send
// datagrams to real ports, workers answer them through NATS, and the reply
// leaves from the address and port the request was sent to.
//
//	udpgate run                 one-command start: embedded NATS, gateway, built-in workers
//	udpgate gateway             the gateway alone, against UDPGATE_NATS_URL
//	udpgate worker NAME         a built-in worker (echo, time, coap, places) against UDPGATE_NATS_URL
//	udpgate lambda              an AWS Lambda function as a worker group
//	udpgate send URL [PAYLOAD]  send a request (udp://, coap://, rpc://) and print the reply
//	udpgate bench URL           load a target; udpgate bench suite: the performance suite
//	udpgate status              who serves what on a running gateway: listeners, counters, worker groups
//
// Configuration comes from UDPGATE_* environment variables; `udpgate help`
// lists them.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"

	"github.com/kelseyhightower/envconfig"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first signal stops gracefully (a gateway answers what it
	// holds); a second one ends the process at once, as by default.
	context.AfterFunc(ctx, stop)
	err := runCommand(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, errUsage) {
			fmt.Fprintln(os.Stderr, "udpgate:", err)
		}
		os.Exit(exitCode(err))
	}
}

var errUsage = errors.New("usage")

// exitError carries a specific exit status.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

// runCommand dispatches a subcommand. Configuration is read here, once.
func runCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		usage(stderr)
		return errUsage
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return nil
	case "send":
		return send(ctx, args, stdout, stderr)
	case "bench":
		return runBench(ctx, args, stdout, stderr)
	case "status":
		return runStatus(ctx, args, stdout, stderr)
	case "replay", "pcap":
		// Their own flags follow the command.
		cfg, err := loadConfig()
		if err != nil {
			return err
		}
		log := newLogger(stderr, cfg)
		if cmd == "replay" {
			return runReplay(ctx, cfg, log, args, stdout, stderr)
		}
		return runPcap(ctx, cfg, log, args, stdout, stderr)
	case "run", "gateway", "worker", "lambda":
	default:
		fmt.Fprintf(stderr, "udpgate: unknown command %q\n\n", cmd)
		usage(stderr)
		return errUsage
	}
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return errUsage
	}
	cfg, err := loadConfig()
	if err != nil {
		return err
	}
	log := newLogger(stderr, cfg)
	switch cmd {
	case "run":
		return runAll(ctx, cfg, log, stdout)
	case "gateway":
		return runGateway(ctx, cfg, log, stdout)
	case "lambda":
		return runLambda(ctx, cfg, log)
	default:
		if fs.NArg() != 1 {
			fmt.Fprintln(stderr, "usage: udpgate worker NAME   (built-in workers: echo, time, coap, places)")
			return errUsage
		}
		return runWorker(ctx, cfg, log, fs.Arg(0))
	}
}

// newLogger returns the process's logger on w: text on a terminal and JSON
// otherwise, unless UDPGATE_LOG_FORMAT says which.
func newLogger(w io.Writer, cfg config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	format := cfg.LogFormat
	if format == "auto" || format == "" {
		format = "json"
		if f, ok := w.(*os.File); ok && isTerminal(f) {
			format = "text"
		}
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func usage(w io.Writer) {
	fmt.Fprint(w, `udpgate: a UDP API gateway on NATS JetStream

Usage:
  udpgate run                  embedded NATS with JetStream, the gateway and the built-in workers
  udpgate gateway              the gateway, against the NATS server at UDPGATE_NATS_URL
  udpgate worker NAME          a built-in worker (echo, time, coap, places), against UDPGATE_NATS_URL
  udpgate lambda               invoke UDPGATE_LAMBDA_FUNCTION for each request on UDPGATE_LAMBDA_SUBJECTS
  udpgate replay [flags]       replay captured requests to a subject prefix or onto the wire; -h for flags
  udpgate pcap import|export   bring a pcap into the capture, or write the capture as a pcap; -h for flags
  udpgate send URL [PAYLOAD]   send a request (udp://, coap://, rpc://) and print the reply; -h for flags
  udpgate bench [flags] URL    load a target: requests/s, latency percentiles, loss; -h for flags
  udpgate bench suite [flags]  the performance suite: gateway vs baselines on loopback, in this process
  udpgate status [flags]       who serves what on a running gateway: listeners, counters, groups; -h for flags
  udpgate help                 this text

Environment:
`)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	envconfig.Usagef(envPrefix, &env{}, tw, "{{range .}}  {{usage_key .}}\t{{usage_default .}}\t{{usage_description .}}\n{{end}}")
	tw.Flush()
}
