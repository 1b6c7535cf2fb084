package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/udpgate/udpgate/client"
	"github.com/udpgate/udpgate/dtls"
	"github.com/udpgate/udpgate/schemas/rpcpb"
)

// newSendCmd is `udpgate send`: requests to URL, resent on a backoff
// until a valid reply comes; the reply on stdout, how it went on stderr.
// With --count N it sends N requests one after the other and prints a line
// per reply and a summary, as ping does. Exit status 1 when a request got
// no reply (or an RPC error or CoAP error code), 2 for a usage error.
func newSendCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "send URL [PAYLOAD]",
		Short: "send a request (udp://, dtls://, coap://, coaps://, rpc://, ws://) and print the reply",
		Long: `Sends a request and prints the reply on standard output; without PAYLOAD the
payload is read from standard input (not for a CoAP GET or DELETE).
  URL: udp://HOST:PORT, coap://HOST[:PORT]/PATH[?QUERY], rpc://HOST:PORT/SERVICE/METHOD
       or ws://HOST:PORT[/PATH]/SERVICE/METHOD (wss:// too): an RPC call on a ws
       listener served at PATH (/ if none), in a binary message (--text: base64);
       coaps://HOST[:PORT]/PATH[?QUERY] and dtls://HOST:PORT: CoAP and datagrams
       over DTLS with --psk-identity and --psk (coaps: port 5684 if absent)
A request over UDP is sent again on a backoff until a reply comes or --timeout
passes; a ws:// call is sent once, on one connection, and waits --timeout
(wss://: --cacert trusts a listener's own certificate).
--broadcast sends a udp:// request, or a coap:// one as a NON, once to a
broadcast address or a multicast group and prints every reply that comes within
--timeout, each with its source.
--mtu forbids fragmentation: a request larger than the path MTU is not sent,
and the path MTU is reported.`,
		Example: `  udpgate send udp://127.0.0.1:9000 hello
  udpgate send coap://127.0.0.1/time
  udpgate send --psk-identity alice --psk s3cret coaps://127.0.0.1/time
  udpgate send rpc://127.0.0.1:7000/InterestingPlaces/GetRandom '{"limit": 2}'
  udpgate send ws://127.0.0.1:8080/rpc/InterestingPlaces/GetRandom '{"limit": 2}'
  udpgate send --count 100 udp://127.0.0.1:9000 ping
  udpgate send --broadcast --timeout 2s udp://192.168.1.255:9000 who
  udpgate send --broadcast coap://224.0.1.187/.well-known/core
  udpgate send --mtu udp://192.0.2.10:9000 < big.bin`,
		Args: cobra.RangeArgs(1, 2),
	}
	fs := cmd.Flags()
	method := fs.String("method", "get", "CoAP method: get, post, put, delete, fetch, patch or ipatch")
	format := fs.Int("content-format", -1, "CoAP Content-Format of the payload, e.g. 0 (text), 50 (JSON); -1 for none")
	wait := fs.Duration("wait", client.DefaultWait, "how long the first copy waits for a reply before the request is sent again")
	factor := fs.Float64("factor", client.DefaultFactor, "each further copy waits this many times longer (CoAP: always 2)")
	timeout := fs.Duration("timeout", sendTimeout, "give up on a request this long after its first copy (longer than the gateway's UDPGATE_DEADLINE, 5s, so that its answer to a request no worker answered in time, a CoAP 5.04 or an RPC DEADLINE_EXCEEDED, arrives)")
	count := fs.Int("count", 1, "send this many requests, one after the other, and print latency and loss")
	bcast := fs.Bool("broadcast", false, "udp:// or coap:// (a NON) to a broadcast address or multicast group: send once (SO_BROADCAST) and print every reply within --timeout with its source")
	mtu := fs.Bool("mtu", false, "forbid fragmentation (IP_MTU_DISCOVER=IP_PMTUDISC_DO): a request larger than the path MTU is not sent, and the path MTU is reported")
	verbose := fs.BoolP("verbose", "v", false, "say where the reply came from, how soon and after how many tries")
	text := fs.Bool("text", false, "ws://: send each call as base64 in a text message (answered in kind) rather than binary")
	cacert := fs.String("cacert", "", "wss://: trust the certificates of this PEM file (a self-signed listener's) instead of the system's roots")
	pskIdentity := fs.String("psk-identity", "", "coaps:// and dtls://: the identity of the pre-shared key")
	psk := fs.String("psk", "", "coaps:// and dtls://: the pre-shared key, as text or as hex after 0x (as in UDPGATE_DTLS_PSK_FILE)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, stdout, stderr := cmd.Context(), cmd.OutOrStdout(), cmd.ErrOrStderr()
		if *count < 1 || *format > 65535 || *wait <= 0 || *timeout <= 0 || *factor < 1 {
			return usageErrorf(cmd, "--count must be at least 1, --wait and --timeout positive, --factor at least 1, --content-format at most 65535")
		}
		if *bcast && (*count != 1 || *mtu) {
			return usageErrorf(cmd, "--broadcast sends one request: not with --count or --mtu")
		}
		o := sendOptions{method: *method, format: *format, wait: *wait, factor: *factor, timeout: *timeout, count: *count, verbose: *verbose, text: *text, cacert: *cacert, broadcast: *bcast, mtu: *mtu}
		if *pskIdentity != "" || *psk != "" {
			keys, err := dtls.ParseKeys([]byte(*pskIdentity + ":" + *psk))
			if err != nil || strings.Contains(*pskIdentity, ":") {
				return usageErrorf(cmd, "--psk-identity and --psk: want an identity (printable, no spaces or colons) and a key (text, or hex after 0x)")
			}
			o.pskIdentity, o.psk = *pskIdentity, keys[*pskIdentity]
		}
		return send(ctx, args, o, stdout, stderr)
	}
	return cmd
}

// sendTimeout is send's default --timeout: the gateway's default deadline
// and a second, so that what the gateway says of a late request is shown.
const sendTimeout = 6 * time.Second

// sendOptions are the flags of send.
type sendOptions struct {
	method        string
	format        int
	wait, timeout time.Duration
	factor        float64
	count         int
	broadcast     bool // send once, print every reply (sendBroadcast)
	mtu           bool // fragmentation forbidden (client.Options.DontFragment)
	verbose       bool
	text          bool
	cacert        string // a PEM file of roots for wss://
	pskIdentity   string // coaps://
	psk           []byte
}

// send sends the request(s) of `udpgate send`.
func send(ctx context.Context, args []string, o sendOptions, stdout, stderr io.Writer) error {
	method, format, wait, factor, timeout, count, verbose := &o.method, &o.format, &o.wait, &o.factor, &o.timeout, &o.count, &o.verbose
	opts := client.Options{Wait: *wait, Factor: *factor, Timeout: *timeout, Method: *method, Text: o.text, PSKIdentity: o.pskIdentity, PSK: o.psk}
	if *format >= 0 {
		cf := uint16(*format)
		opts.ContentFormat = &cf
	}
	opts.DontFragment = o.mtu
	if o.cacert != "" {
		var err error
		if opts.TLS, err = trusting(o.cacert); err != nil {
			return &exitError{2, fmt.Errorf("send: %w", err)}
		}
	}
	target := args[0]
	var payload []byte
	if len(args) == 2 {
		payload = []byte(args[1])
	} else if m := strings.ToLower(*method); !strings.HasPrefix(target, "coap:") && !strings.HasPrefix(target, "coaps:") || (m != "get" && m != "delete") {
		const limit = 1 << 20
		var err error
		if payload, err = io.ReadAll(io.LimitReader(os.Stdin, limit+1)); err != nil {
			return fmt.Errorf("send: read standard input: %w", err)
		}
		if len(payload) > limit {
			return fmt.Errorf("send: standard input is larger than %d bytes", limit)
		}
	}
	if o.broadcast {
		return sendBroadcast(ctx, target, payload, opts, stdout, stderr)
	}
	c, err := client.Dial(ctx, target, opts)
	if errors.Is(err, client.ErrInvalid) {
		return &exitError{2, fmt.Errorf("send: %w", err)}
	}
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	defer c.Close()
	if o.mtu && *verbose {
		if mtu, err := c.PathMTU(); err == nil {
			fmt.Fprintf(stderr, "path MTU to %s: %d\n", c.Remote(), mtu)
		}
	}
	if *count == 1 {
		return sendOne(ctx, c, payload, *verbose, stdout, stderr)
	}
	return sendMany(ctx, c, target, payload, *count, stdout, stderr)
}

// sendOne prints the reply to one request.
func sendOne(ctx context.Context, c *client.Conn, payload []byte, verbose bool, stdout, stderr io.Writer) error {
	res, err := c.Do(ctx, payload)
	for _, r := range res.Rejected {
		fmt.Fprintln(stderr, r)
	}
	if err != nil {
		return &exitError{1, fmt.Errorf("send: %w", err)}
	}
	if verbose || res.Tries > 1 {
		after := ""
		if res.Tries > 0 { // 0 for CoAP: go-coap does not count its retransmissions
			after = fmt.Sprintf(" after %d tries", res.Tries)
			if res.Tries == 1 {
				after = " after 1 try"
			}
		}
		fmt.Fprintf(stderr, "reply from %s in %s%s\n", res.From, res.Latency.Round(time.Microsecond), after)
	}
	if verbose && res.Code != 0 {
		fmt.Fprintf(stderr, "coap: %s, content-format %d\n", client.CodeString(res.Code), res.ContentFormat)
	}
	if res.Status != rpcpb.Status_STATUS_OK {
		return &exitError{1, fmt.Errorf("rpc: %s: %s", res.Status, res.Error)}
	}
	body := res.Body
	if res.Response != nil {
		if body, err = protojson.Marshal(res.Response); err != nil {
			return fmt.Errorf("send: %w", err)
		}
	}
	if len(body) > 0 { // an empty reply (a 4.04, an empty ACK'd answer) prints nothing
		stdout.Write(body)
		if body[len(body)-1] != '\n' && utf8.Valid(body) {
			io.WriteString(stdout, "\n") // end a text reply's line; binary replies stay byte for byte
		}
	}
	if res.Code != 0 && res.Code>>5 != 2 {
		return &exitError{1, fmt.Errorf("coap: %s", client.CodeString(res.Code))}
	}
	return nil
}

// sendMany sends count requests one after the other, a line for each
// reply, then the summary; an interrupt ends the run early, with the
// summary of the requests that were answered or timed out.
func sendMany(ctx context.Context, c *client.Conn, target string, payload []byte, count int, stdout, stderr io.Writer) error {
	var latencies []time.Duration
	sent := 0
	for seq := 1; seq <= count; seq++ {
		res, err := c.Do(ctx, payload)
		for _, r := range res.Rejected {
			fmt.Fprintf(stderr, "seq=%d: %s\n", seq, r)
		}
		if ctx.Err() != nil {
			break
		}
		sent++
		if err != nil {
			fmt.Fprintf(stderr, "seq=%d: %v\n", seq, err)
			continue
		}
		latencies = append(latencies, res.Latency)
		var extra strings.Builder
		if res.Tries > 1 {
			fmt.Fprintf(&extra, " tries=%d", res.Tries)
		}
		if res.Code != 0 {
			fmt.Fprintf(&extra, " code=%d.%02d", res.Code>>5, res.Code&31)
		}
		if res.Status != rpcpb.Status_STATUS_OK {
			fmt.Fprintf(&extra, " status=%s", res.Status)
		}
		fmt.Fprintf(stdout, "%d bytes from %s: seq=%d time=%s ms%s\n", len(res.Body), res.From, seq, ms(res.Latency), extra.String())
	}
	st := client.Summarize(sent, latencies)
	fmt.Fprintf(stdout, "--- %s ---\n", target)
	fmt.Fprintf(stdout, "%d sent, %d received, %.4g%% loss\n", st.Sent, st.Received, st.Loss())
	if st.Received > 0 {
		fmt.Fprintf(stdout, "latency min/p50/p90/p99/max = %s/%s/%s/%s/%s ms\n",
			ms(st.Min), ms(st.P50), ms(st.P90), ms(st.P99), ms(st.Max))
	}
	if st.Received < st.Sent {
		return &exitError{1, fmt.Errorf("send: %d of %d requests got no reply", st.Sent-st.Received, st.Sent)}
	}
	return nil
}

// sendBroadcast sends payload once to target, a broadcast address or a
// multicast group, and prints every reply within the timeout, a line
// each: its size, source and time, a CoAP response's code, then the
// reply as text (quoted when it is not printable UTF-8). Exit status 1
// when none came.
func sendBroadcast(ctx context.Context, target string, payload []byte, opts client.Options, stdout, stderr io.Writer) error {
	n, err := client.Broadcast(ctx, target, payload, opts, func(r client.Result) {
		body := string(r.Body)
		if !utf8.Valid(r.Body) || strings.ContainsFunc(body, func(c rune) bool { return c < ' ' && c != '\t' }) {
			body = strconv.Quote(body)
		}
		code := ""
		if r.Code != 0 {
			code = fmt.Sprintf(" code=%d.%02d", r.Code>>5, r.Code&31)
		}
		fmt.Fprintf(stdout, "%d bytes from %s: time=%s ms%s: %s\n", len(r.Body), r.From, ms(r.Latency), code, body)
	})
	if errors.Is(err, client.ErrInvalid) {
		return &exitError{2, fmt.Errorf("send: %w", err)}
	}
	if err != nil {
		return fmt.Errorf("send: %w", err)
	}
	fmt.Fprintf(stderr, "%d replies within %s\n", n, opts.Timeout)
	if n == 0 {
		return &exitError{1, fmt.Errorf("send: %w from %s within %s", client.ErrNoReply, target, opts.Timeout)}
	}
	return nil
}

// trusting returns a TLS configuration that trusts the certificates of
// the PEM file name (--cacert) rather than the system's roots.
func trusting(name string) (*tls.Config, error) {
	pem, err := os.ReadFile(name)
	if err != nil {
		return nil, fmt.Errorf("--cacert: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--cacert: %s has no PEM certificate", name)
	}
	return &tls.Config{RootCAs: roots}, nil
}

// ms formats d in milliseconds with three decimals, as ping does.
func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 3, 64)
}
