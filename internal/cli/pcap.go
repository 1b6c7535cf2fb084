package cli

import (
	"cmp"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/udpgate/udpgate/coap"
	"github.com/udpgate/udpgate/ingress"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/node"
	"github.com/udpgate/udpgate/pcap"
	"github.com/udpgate/udpgate/schemas"
)

func newPcapCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "pcap",
		Short: "bring a pcap into the capture, or write the capture as a pcap",
		Long: `udpgate pcap import publishes a pcap's UDP requests into the capture stream;
udpgate pcap export writes the capture stream's requests (and replies) as a pcap.
Both use UDPGATE_NATS_URL, UDPGATE_SUBJECT_PREFIX and UDPGATE_STREAM.`,
		Args: cobra.ArbitraryArgs,
	}
	cmd.AddCommand(newPcapImportCmd(), newPcapExportCmd())
	return cmd
}

// listFlag collects comma-separated values from a repeated flag.
// listFlag collects comma-separated values from a repeated flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Type() string   { return "list" }
func (l *listFlag) Set(s string) error {
	*l = append(*l, config.SplitList(s)...)
	return nil
}

func parsePorts(list []string) ([]uint16, error) {
	var out []uint16
	for _, s := range list {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("port %q: want 1..65535", s)
		}
		out = append(out, uint16(n))
	}
	return out, nil
}

func newPcapImportCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "import [flags] FILE",
		Args:  cobra.ExactArgs(1),
		Short: "publish a capture's UDP requests into the capture stream (FILE - is stdin)",
		Long:  "Publishes the UDP requests of a pcap or pcapng file into the capture stream, as the gateway would have.\nUses UDPGATE_NATS_URL, UDPGATE_SUBJECT_PREFIX and UDPGATE_STREAM; flags may come before or after FILE.",
	}
	fs := cmd.Flags()
	var ports, lists listFlag
	fs.Var(&ports, "port", "raw listener port(s) whose datagrams to import, comma-separated or repeated (9000,9001)")
	fs.Var(&lists, "listener", "listener(s) PORT/PROTOCOL, comma-separated or repeated (5683/coap,7000/rpc); default: UDPGATE_LISTENERS if no -port, but its ws listeners (TCP)")
	stream := fs.String("stream", "", "stream to import into, created like the capture if missing (default: UDPGATE_STREAM)")
	prefix := fs.String("prefix", "", "subject prefix (default: UDPGATE_SUBJECT_PREFIX); another stream than the capture needs another prefix")
	nodeName := fs.String("node", pcap.DefaultNode, "gateway node named in ce-source and the reply subject (udpgate-reply)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, stdout, stderr := cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr()
		cfg, log, err := loadConfig(stderr)
		if err != nil {
			return err
		}
		*stream, *prefix = cmp.Or(*stream, cfg.Stream), cmp.Or(*prefix, cfg.Prefix)
		pos := args
		if len(pos) != 1 {
			return usageErrorf(cmd, "bad arguments or flag values")
		}
		listeners := map[uint16]string{}
		rawPorts, err := parsePorts(ports)
		if err != nil {
			return fmt.Errorf("pcap import: -port: %w", err)
		}
		for _, p := range rawPorts {
			listeners[p] = schemas.ProtocolRaw
		}
		ls, err := config.ParseListeners(strings.Join(lists, ","))
		if err != nil {
			return fmt.Errorf("pcap import: -listener: %w", err)
		}
		fromConfig := len(ports) == 0 && len(lists) == 0
		if fromConfig {
			ls = cfg.Listeners
		}
		for _, l := range ls {
			if l.Protocol == schemas.ProtocolWS {
				if fromConfig {
					continue // TCP: no datagram of a capture is its
				}
				return fmt.Errorf("pcap import: -listener %s: a ws listener takes WebSocket messages over TCP, not UDP datagrams", schemas.Listener(l.Addr.Port(), l.Protocol))
			}
			if p, ok := listeners[l.Addr.Port()]; ok && p != l.Protocol {
				return fmt.Errorf("pcap import: port %d is both %s and %s", l.Addr.Port(), p, l.Protocol)
			}
			listeners[l.Addr.Port()] = l.Protocol
		}
		if len(listeners) == 0 {
			fmt.Fprintln(stderr, "udpgate pcap import: name the ports to import: -port 9000 (raw) or -listener 5683/coap,7000/rpc")
			return errUsage
		}
		if !config.ValidSubjectPrefix(*prefix) || !config.ValidStreamName(*stream) {
			return fmt.Errorf("pcap import: bad -prefix %q or -stream %q", *prefix, *stream)
		}

		name := pos[0]
		var in io.Reader = os.Stdin
		if name != "-" {
			f, err := os.Open(name)
			if err != nil {
				return fmt.Errorf("pcap import: %w", err)
			}
			defer f.Close()
			in = f
		}
		nc, js, err := node.ConnectJetStream(cfg, "udpgate pcap import")
		if err != nil {
			return fmt.Errorf("pcap import: %w", err)
		}
		defer nc.Close()
		if _, err := ingress.EnsureStream(ctx, js, ingress.StreamConfig{
			Name: *stream, Subject: schemas.CaptureWildcard(*prefix), Stores: schemas.InWildcard(*prefix),
			MaxAge: cfg.StreamMaxAge, MaxBytes: cfg.StreamMaxBytes, Replicas: cfg.StreamReplicas,
		}); err != nil {
			return fmt.Errorf("pcap import: %w", err)
		}
		im := &pcap.Importer{
			NATS: nc, Stream: *stream, Prefix: *prefix, Node: *nodeName, Listeners: listeners,
			Deadline: cfg.Deadline, MaxInFlight: cfg.MaxInFlight, Log: log,
			CoAP: coap.Config{BlockSize: cfg.CoAPBlockSize, MaxBody: cfg.CoAPMaxBody},
		}
		start := time.Now()
		st, err := im.Import(ctx, in)
		printImport(stdout, name, *stream, st, time.Since(start))
		if err != nil {
			return fmt.Errorf("pcap import: %w", err)
		}
		if st.Failed > 0 {
			return fmt.Errorf("pcap import: %d publishes failed", st.Failed)
		}
		return nil
	}
	return cmd
}

func printImport(w io.Writer, name, stream string, st pcap.ImportStats, took time.Duration) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "pcap import %s -> stream %s in %s\n", name, stream, took.Round(time.Millisecond))
	fmt.Fprintf(tw, "  frames read\t%d\n", st.Frames)
	fmt.Fprintf(tw, "  UDP datagrams\t%d\t(%d reassembled from %d IPv4 fragments)\n", st.Datagrams, st.Reassembled, st.FragmentsReused)
	fmt.Fprintf(tw, "  requests published\t%d\n", st.Requests)
	fmt.Fprintf(tw, "    stored\t%d\n", st.Published)
	fmt.Fprintf(tw, "    failed\t%d\n", st.Failed)
	fmt.Fprintf(tw, "  skipped\t%d\n", st.SkippedTotal())
	for _, r := range []pcap.Reason{pcap.NotIP, pcap.NotUDP, pcap.Fragment, pcap.Truncated, pcap.Malformed, pcap.UnsupportedLink} {
		fmt.Fprintf(tw, "    %s\t%d\n", r, st.Skipped[r])
	}
	fmt.Fprintf(tw, "    other port\t%d\n", st.OtherPort)
	fmt.Fprintf(tw, "    not a request\t%d\t(coap: %d pings, %d malformed or not requests, %d retransmissions, %d Block1 continuations, %d rejected; rpc: %d not calls)\n",
		st.NotRequest, st.CoAP.Pings, st.CoAP.Malformed, st.CoAP.Duplicates, st.CoAP.BlockContinue, st.CoAP.BadOption+st.CoAP.Rejected, st.RPC.Malformed)
	tw.Flush()
}

func newPcapExportCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "export",
		Args:  cobra.NoArgs,
		Short: "write the capture stream's requests (and replies) as a pcap",
		Long:  "Writes the capture stream's requests (and with --replies the recorded replies) as a pcap file.\nWhat ws listeners received (WebSocket calls and connection events) is not UDP: it is left out and counted.\nUses UDPGATE_NATS_URL, UDPGATE_SUBJECT_PREFIX and UDPGATE_STREAM.",
	}
	fs := cmd.Flags()
	var ports listFlag
	fs.Var(&ports, "port", "listener port(s) to export, comma-separated or repeated; default: all")
	since := fs.String("since", "", "start of the window, by each request's time (ce-time if imported, else when stored): RFC 3339 time or a duration before now (10m); default: the stream's start")
	until := fs.String("until", "", "end of the window: RFC 3339 time or a duration before now; default: now")
	out := fs.StringP("output", "o", "-", "output file; - is stdout")
	replies := fs.Bool("replies", false, "also write the recorded replies (default: UDPGATE_REPLIES_STREAM)")
	stream := fs.String("stream", "", "capture stream (default: UDPGATE_STREAM)")
	repliesStream := fs.String("replies-stream", "", "stream of recorded replies (default: UDPGATE_REPLIES_STREAM)")
	prefix := fs.String("prefix", "", "subject prefix (default: UDPGATE_SUBJECT_PREFIX)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, stdout, stderr := cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr()
		cfg, _, err := loadConfig(stderr)
		if err != nil {
			return err
		}
		*stream, *prefix, *repliesStream = cmp.Or(*stream, cfg.Stream), cmp.Or(*prefix, cfg.Prefix), cmp.Or(*repliesStream, cfg.RepliesStream)
		pos := args
		if len(pos) != 0 {
			return usageErrorf(cmd, "bad arguments or flag values")
		}
		now := time.Now()
		ex := &pcap.Exporter{Stream: *stream, Prefix: *prefix}
		if ex.Ports, err = parsePorts(ports); err != nil {
			return fmt.Errorf("pcap export: -port: %w", err)
		}
		if ex.Since, err = parseWhen(*since, now); err != nil {
			return fmt.Errorf("pcap export: -since: %w", err)
		}
		if ex.Until, err = parseWhen(*until, now); err != nil {
			return fmt.Errorf("pcap export: -until: %w", err)
		}
		if ex.Until.IsZero() {
			ex.Until = now
		}
		if *replies {
			if *repliesStream == "" || *repliesStream == "off" {
				return errors.New("pcap export: -replies: no replies stream (UDPGATE_REPLIES_STREAM is off)")
			}
			ex.RepliesStream = *repliesStream
		}

		nc, js, err := node.ConnectJetStream(cfg, "udpgate pcap export")
		if err != nil {
			return fmt.Errorf("pcap export: %w", err)
		}
		defer nc.Close()
		ex.JetStream = js
		w, summary := stdout, stdout
		var f *os.File
		if *out != "-" {
			if f, err = os.Create(*out); err != nil {
				return fmt.Errorf("pcap export: %w", err)
			}
			defer f.Close()
			w = f
		} else {
			summary = stderr // stdout is the pcap
		}
		st, err := ex.Export(ctx, w)
		if err == nil && f != nil {
			err = f.Close()
		}
		name := *out
		if name == "-" {
			name = "stdout"
		}
		fmt.Fprintf(summary, "pcap export -> %s: %d packets (%d requests, %d replies); left out: %d outside the window, %d undecodable, %d from ws listeners and %d replies to them (not UDP), %d replies unmatched, %d replies not sent\n",
			name, st.Requests+st.Replies, st.Requests, st.Replies, st.Outside, st.Undecodable, st.WS, st.WSReplies, st.Unmatched, st.NotSent)
		if err != nil {
			return fmt.Errorf("pcap export: %w", err)
		}
		return nil
	}
	return cmd
}

// parseWhen parses an RFC 3339 time, or a duration before now ("10m");
// empty is the zero time.
func parseWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("%q: a duration before now must not be negative", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a duration like 10m", s)
	}
	return t, nil
}
