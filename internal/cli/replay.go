package cli

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/udpgate/udpgate/internal/node"
	"github.com/udpgate/udpgate/replay"
)

// replayLong is the description of `udpgate replay`.
var replayLong = `Reads the capture stream with an ephemeral ordered consumer (worker groups
are not disturbed) and sends the requests again. Without --to, each request
is published as the gateway publishes it: to SUBJECT-PREFIX.in.PORT... with a
reply subject, for direct candidate groups, and to
SUBJECT-PREFIX.capture.PORT..., which the replay stream stores as
SUBJECT-PREFIX.in.PORT..., for durable ones. It gets a fresh ce-id, the reply
subject SUBJECT-PREFIX.reply.replay-RUN.ID (also in udpgate-reply), ` + replay.HeaderReplayOf + ` set
to the recorded ce-id, and ce-time set to the recorded time. With --to, what
was not one datagram (a CoAP Block1 upload, a ws listener's calls and
events) is skipped and counted.`

// newReplayCmd is `udpgate replay`: it selects captured requests by time,
// port and subject and sends them again, either onto the wire (--to) or to
// a subject prefix that candidate worker groups serve (direct ones by
// subscription, durable ones from the replay stream), and with --compare
// compares the candidates' replies with the recorded ones.
func newReplayCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "replay captured requests to a subject prefix or onto the wire",
		Long:  replayLong,
		Example: `  udpgate replay --since 10m --port 9000 --to udp://127.0.0.1:7777 --speed max
  udpgate replay --since 1h --subject-prefix udpgate.shadow --compare --speed max`,
		Args: cobra.NoArgs,
	}
	fs := cmd.Flags()
	var (
		since     = fs.String("since", "", "start of the window: RFC 3339 time or a duration ago (10m); default: the capture's first request")
		until     = fs.String("until", "", "end of the window: RFC 3339 time or a duration ago; default: now")
		subjects  stringList
		ports     portList
		to        = fs.String("to", "", "send onto the wire to `udp://HOST:PORT`, datagram by datagram, instead of to a subject prefix")
		target    = fs.String("subject-prefix", "", "send to PREFIX.in.PORT... for direct candidate groups, and into the replay stream for durable ones (default: UDPGATE_SUBJECT_PREFIX.replay)")
		replayStr = fs.String("replay-stream", "", "the replay stream, subjects PREFIX.capture.> stored as PREFIX.in.> (created if missing, checked and used as is otherwise); default: the subject prefix in upper case, dots as _")
		speed     = fs.String("speed", "original", "pace: original (the recorded gaps), max, or a factor like 2x")
		compare   = fs.Bool("compare", false, "compare the candidate's replies with the recorded ones (UDPGATE_REPLIES_STREAM); exit status 1 if any differ or are missing")
		diffs     = fs.Int("diffs", 5, "with --compare, how many differences to show")
		wait      = fs.Duration("wait", 2*time.Second, "how long to wait for replies after the last send")
		stream    = fs.String("stream", "", "the capture stream to read (default: UDPGATE_STREAM)")
		prepare   = fs.Bool("prepare", false, "only create the replay stream, so that a durable candidate group can bind to it before the first replay")
	)
	fs.Var(&ports, "port", "only requests received on this port (repeat, or a comma list)")
	fs.Var(&subjects, "subject", "only requests whose subject matches this filter, wildcards allowed (repeat, or a comma list)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, stdout, stderr := cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr()
		cfg, log, err := loadConfig(stderr)
		if err != nil {
			return err
		}
		*stream, *target = cmp.Or(*stream, cfg.Stream), cmp.Or(*target, replay.DefaultTarget(cfg.Prefix))
		if len(args) > 0 {
			fmt.Fprintf(stderr, "udpgate replay: unexpected argument %q\n", args[0])
			return errUsage
		}

		now := time.Now()
		r := &replay.Replayer{Stream: *stream, Prefix: cfg.Prefix, Ports: ports, Subjects: subjects, Wait: *wait}

		if *since != "" {
			if r.Since, err = replay.ParseTime(*since, now); err != nil {
				return usageError(fmt.Errorf("replay: --since: %w", err))
			}
		}
		if *until != "" {
			if r.Until, err = replay.ParseTime(*until, now); err != nil {
				return usageError(fmt.Errorf("replay: --until: %w", err))
			}
			if r.Until.Before(r.Since) {
				return usageError(fmt.Errorf("replay: --until %s is before --since %s", r.Until.Format(time.RFC3339), r.Since.Format(time.RFC3339)))
			}
		}
		if r.Speed, err = replay.ParseSpeed(*speed); err != nil {
			return usageError(fmt.Errorf("replay: --speed: %w", err))
		}
		if *compare && *to != "" {
			return usageError(errors.New("replay: --compare needs a replay to a subject prefix (a candidate group), not --to"))
		}
		if *compare && cfg.RepliesStream == "" {
			return errors.New("replay: --compare needs the recorded replies, but UDPGATE_REPLIES_STREAM is off")
		}
		if f, ok := stderr.(*os.File); ok && isTerminal(f) {
			r.Progress = stderr
		}

		nc, js, err := node.ConnectJetStream(cfg, "udpgate replay")
		if err != nil {
			return fmt.Errorf("replay: %w", err)
		}
		defer nc.Close()
		r.JetStream = js

		if *to != "" {
			return replayWire(ctx, r, *to, stdout)
		}

		t := replay.Target{Prefix: *target, Stream: *replayStr, Keep: *compare}
		if t.Stream == "" {
			t.Stream = replay.StreamName(t.Prefix)
		}
		did, err := replay.EnsureStream(ctx, js, t.Stream, t.Prefix)
		if err != nil {
			return err
		}
		if *prepare {
			fmt.Fprintf(stdout, "replay: %s; direct candidate groups subscribe to %s.in.PORT..., durable ones consume them from the stream\n", did, t.Prefix)
			return nil
		}
		log.Debug("replay: " + did)
		res, err := r.Publish(ctx, t)
		if err != nil {
			return err
		}
		if res.Sent > 0 && res.NoResponders == res.Sent {
			if st, err := js.Stream(ctx, t.Stream); err == nil && st.CachedInfo().State.Consumers == 0 {
				log.Warn("replay: no candidate group received the requests: start it first (direct: subscribed to the subjects; durable: bound to the stream)",
					"subjects", t.Prefix+".in.>", "stream", t.Stream)
			}
		}
		printSummary(stdout, r, res, t.Prefix+".in.> (stream "+t.Stream+")")
		if res.NoResponders > 0 || res.Uncaptured > 0 {
			fmt.Fprintf(stdout, "no direct candidate for %d, not stored for durable candidates %d\n", res.NoResponders, res.Uncaptured)
		}
		if !*compare {
			return nil
		}
		cmp, err := replay.Compare(ctx, js, cfg.RepliesStream, res, *diffs)
		if err != nil {
			return err
		}
		unrecorded := ""
		if cmp.Unrecorded > 0 {
			unrecorded = fmt.Sprintf("; %d not compared (ws connection events, whose replies are not recorded)", cmp.Unrecorded)
		}
		fmt.Fprintf(stdout, "compare with %s: %d identical, %d different, %d missing, %d unanswered%s\n",
			cfg.RepliesStream, cmp.Identical, cmp.Different, cmp.Missing, cmp.Unanswered, unrecorded)
		for i, d := range cmp.Diffs {
			fmt.Fprintf(stdout, "\ndifference %d of %d: %s", i+1, cmp.Different+cmp.Missing, d)
		}
		if !cmp.OK() {
			return &exitError{code: 1, err: fmt.Errorf("replay: %d different, %d missing", cmp.Different, cmp.Missing)}
		}
		return nil
	}
	return cmd
}

// replayWire is `udpgate replay --to udp://HOST:PORT`.
func replayWire(ctx context.Context, r *replay.Replayer, to string, stdout io.Writer) error {
	dst, err := replay.ParseTo(to)
	if err != nil {
		return usageError(fmt.Errorf("replay: --to: %w", err))
	}
	network := "udp4"
	if dst.Addr().Is6() {
		network = "udp6"
	}
	conn, err := net.ListenUDP(network, nil)
	if err != nil {
		return fmt.Errorf("replay: socket: %w", err)
	}
	defer conn.Close()
	res, err := r.Wire(ctx, conn, dst)
	if err != nil {
		return err
	}
	printSummary(stdout, r, res, "udp://"+dst.String())
	return nil
}

// printSummary writes what a replay did, in two lines.
func printSummary(w io.Writer, r *replay.Replayer, res replay.Result, dest string) {
	window := ""
	if res.Selected > 0 {
		window = fmt.Sprintf(" (captured %s .. %s)", res.First.UTC().Format(time.RFC3339Nano), res.Last.UTC().Format(time.RFC3339Nano))
	}
	fmt.Fprintf(w, "replay: %d requests from %s%s to %s, speed %s\n", res.Selected, r.Stream, window, dest, r.Speed)
	fmt.Fprintf(w, "sent %d, answered %d, skipped %d, errors %d, duration %s\n",
		res.Sent, res.Answered, res.Skipped, res.Errors, res.Duration.Round(time.Millisecond))
}

// isTerminal reports whether f is a terminal (a character device).

// stringList is a repeatable flag whose values may also be comma lists.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }
func (l *stringList) Type() string   { return "list" }
func (l *stringList) Set(s string) error {
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			*l = append(*l, f)
		}
	}
	return nil
}

// portList is a repeatable flag of ports, also comma lists.
type portList []uint16

func (l *portList) String() string { return fmt.Sprint([]uint16(*l)) }
func (l *portList) Type() string   { return "ports" }
func (l *portList) Set(s string) error {
	p, err := replay.ParsePorts(s)
	if err != nil {
		return err
	}
	*l = append(*l, p...)
	return nil
}

// usageError marks err as a mistake in the command line: exit status 2.
