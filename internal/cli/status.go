package cli

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/schemas"
)

// statusUsage is the synopsis of `udpgate status`.
const statusUsage = `usage: udpgate status [flags]   who serves what on a running gateway: its listeners, their counters and worker groups
  Asks GET /v1/status of the gateway's HTTP endpoint (UDPGATE_HTTP_LISTEN, or -url).`

// statusPath is the gateway's status endpoint (observe.Server).
const statusPath = "/v1/status"

// maxStatusBody bounds the status document read: a node with thousands
// of groups stays far below it.
const maxStatusBody = 16 << 20

// runStatus is `udpgate status`: it reads a gateway's GET /v1/status and
// prints a table per listener with the groups that serve it, or with
// -json the document as received.
func newStatusCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Args:  cobra.NoArgs,
		Short: "who serves what on a running gateway: listeners, counters, worker groups",
		Long:  statusUsage,
	}
	fs := cmd.Flags()
	baseURL := urlFlag(fs, "the gateway's")
	asJSON := fs.Bool("json", false, "print the status as the gateway sent it, JSON")
	timeout := fs.Duration("timeout", 5*time.Second, "give up if the gateway has not answered after this long")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		ctx, stdout := cmd.Context(), cmd.OutOrStdout()
		if len(args) != 0 || *timeout <= 0 {
			return usageErrorf(cmd, "bad arguments or flag values")
		}
		base, fromFlag, err := baseURL()
		if err != nil {
			return fmt.Errorf("status: %w", err)
		}
		endpoint, err := statusEndpoint(base)
		if err != nil {
			return err
		}
		hint := "check -url"
		if !fromFlag {
			hint = "set UDPGATE_HTTP_LISTEN as the gateway has it, or pass -url"
		}
		body, err := fetchStatus(ctx, endpoint, *timeout, hint)
		if err != nil {
			return err
		}
		var st gateway.Status
		if err := json.Unmarshal(body, &st); err != nil {
			return fmt.Errorf("status: %s: not a gateway's status: %w", endpoint, err)
		}
		if *asJSON {
			if len(body) > 0 && body[len(body)-1] != '\n' {
				body = append(body, '\n')
			}
			_, err := stdout.Write(body)
			return err
		}
		return printStatus(stdout, st, time.Now())
	}
	return cmd
}

// urlFlag adds --url, the base URL of whose HTTP endpoint to ask, to fs,
// and returns the function that reads it after parsing: the URL, whether
// the flag named it (the setting to fix if it is wrong: the flag, or
// UDPGATE_HTTP_LISTEN), and why the default cannot be used.
func urlFlag(fs *pflag.FlagSet, whose string) func() (string, bool, error) {
	def, defErr := defaultStatusURL()
	base := fs.String("url", def, "base URL of "+whose+" HTTP endpoint; the default comes from UDPGATE_HTTP_LISTEN, with 127.0.0.1 for a wildcard host")
	return func() (string, bool, error) {
		if fs.Changed("url") {
			return *base, true, nil
		}
		return *base, false, defErr
	}
}

// defaultStatusURL returns the base URL of the HTTP endpoint that a
// process started in this environment serves: UDPGATE_HTTP_LISTEN as the
// process reads it (its default when unset), with 127.0.0.1 for an empty
// or wildcard host. It fails when the variable names no port to connect
// to: empty (no endpoint) or port 0 (a free port the process picked).
func defaultStatusURL() (string, error) {
	listen, err := config.GatewayHTTPListen()
	if err != nil {
		return "", err
	}
	if listen == "" {
		return "", errors.New("UDPGATE_HTTP_LISTEN is empty, so processes serve no HTTP endpoint here: pass -url http://HOST:PORT of the gateway's")
	}
	host, port, err := net.SplitHostPort(listen)
	if _, perr := strconv.ParseUint(port, 10, 16); err != nil || perr != nil || (host != "" && host != "localhost" && net.ParseIP(host) == nil) {
		return "", fmt.Errorf("UDPGATE_HTTP_LISTEN: %q is not HOST:PORT (like 127.0.0.1:9780); pass -url", listen)
	}
	if port == "0" {
		return "", fmt.Errorf("UDPGATE_HTTP_LISTEN is %s: the gateway picked a free port, which it printed and logged; pass -url http://HOST:PORT", listen)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port), nil
}

// statusEndpoint returns the status URL of the endpoint at base: an
// http:// or https:// URL (http:// when base has no scheme), with
// /v1/status appended unless it is there.
func statusEndpoint(base string) (string, error) {
	raw := strings.TrimSpace(base)
	if !strings.Contains(raw, "://") {
		raw = "http://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("status: -url %q is not an http:// URL like http://127.0.0.1:9090", base)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	if !strings.HasSuffix(u.Path, statusPath) {
		u.Path += statusPath
	}
	return u.String(), nil
}

// fetchStatus GETs endpoint and returns the body of a 200 answer. Its
// errors say what to do: hint names the setting that chose the URL.
func fetchStatus(ctx context.Context, endpoint string, timeout time.Duration, hint string) ([]byte, error) {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, endpoint, nil)
	if err != nil {
		return nil, fmt.Errorf("status: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return nil, fmt.Errorf("status: %w", ctx.Err())
	case rctx.Err() != nil:
		return nil, fmt.Errorf("status: %s did not answer within %s (-timeout)", endpoint, timeout)
	default:
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // without the method and URL, said already
		}
		return nil, fmt.Errorf("status: cannot connect to %s: %w (is the gateway running? %s)", endpoint, err, hint)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatusBody+1))
	if err != nil {
		return nil, fmt.Errorf("status: read %s: %w", endpoint, err)
	}
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("status: %s: this process is not a gateway (no %s)", endpoint, statusPath)
	case resp.StatusCode != http.StatusOK:
		line, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
		return nil, fmt.Errorf("status: %s: %s: %.200s", endpoint, resp.Status, line)
	case len(body) > maxStatusBody:
		return nil, fmt.Errorf("status: %s: the answer is larger than %d bytes", endpoint, maxStatusBody)
	}
	return body, nil
}

// printStatus writes st as tables: a line about the node, then for each
// listener its counters and the groups that serve it, then the groups
// that serve none of the listeners. now dates the discovery.
func printStatus(w io.Writer, st gateway.Status, now time.Time) error {
	asked := "groups not asked yet"
	if !st.DiscoveredAt.IsZero() {
		asked = "groups asked " + roundDuration(now.Sub(st.DiscoveredAt)).String() + " ago"
	}
	if st.DiscoveryInterval != "" {
		asked += " (every " + st.DiscoveryInterval + ")"
	}
	fmt.Fprintf(w, "node %s, prefix %s: %s\n", st.Node, st.Prefix, asked)
	if len(st.Listeners) == 0 {
		fmt.Fprintln(w, "\nno listeners")
	}
	serving := map[string]bool{}
	for _, l := range st.Listeners {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "LISTENER\tADDRESS\tSUBJECT\tRECEIVED\tANSWERED\tNO_RESPONDERS\tUNSERVED\tNO_WORKER\tNO_ANSWER\tSHED\tDISCOVERY")
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\n", l.Listener, l.Address, l.Subject,
			l.Received, l.Answered, l.NoResponders, l.Unserved, l.NoWorker, l.NoAnswer, l.Shed, l.Discovery)
		if l.Origin != "" {
			fmt.Fprintf(tw, "  from %s, on node %s\n", l.Origin, st.Node)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(l.Groups) == 0 {
			fmt.Fprintf(w, "  no group serves this listener: %s\n", unservedOutcome(l.Listener))
			continue
		}
		for _, gr := range l.Groups {
			serving[gr.Name] = true
		}
		if err := printGroups(w, l.Groups); err != nil {
			return err
		}
	}
	var others []gateway.Group
	for _, gr := range st.Groups {
		if !serving[gr.Name] {
			others = append(others, gr)
		}
	}
	if len(others) > 0 {
		fmt.Fprintln(w, "\ngroups that serve none of these listeners:")
		if err := printGroups(w, others); err != nil {
			return err
		}
	}
	return printObserved(w, st)
}

// printObserved writes the CoAP resources with Observe registrations, of
// every node that shares the node's Observe bucket: per resource, its
// observers and how many each node holds.
func printObserved(w io.Writer, st gateway.Status) error {
	if st.ObserveBucket == "" {
		return nil
	}
	if len(st.Observed) == 0 {
		fmt.Fprintf(w, "\nno CoAP resource is observed (Observe bucket %s)\n", st.ObserveBucket)
		return nil
	}
	fmt.Fprintf(w, "\nobserved CoAP resources, every node's (Observe bucket %s):\n", st.ObserveBucket)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  PORT\tRESOURCE\tOBSERVERS\tNODES")
	for _, o := range st.Observed {
		nodes := make([]string, 0, len(o.Nodes))
		for _, n := range slices.Sorted(maps.Keys(o.Nodes)) {
			nodes = append(nodes, n+"="+strconv.Itoa(o.Nodes[n]))
		}
		fmt.Fprintf(tw, "  %d\t%s\t%d\t%s\n", o.Port, o.Resource, o.Observers, strings.Join(nodes, " "))
	}
	return tw.Flush()
}

// printGroups writes a table of the groups, one line each, then under it
// each group's resources and subjects (outside the table, whose columns
// they would break).
func printGroups(w io.Writer, groups []gateway.Group) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  GROUP\tDELIVERY\tINSTANCES\tREQUESTS\tERRORS\tAVERAGE\tKNOWN FROM")
	for _, gr := range groups {
		delivery := cmp.Or(gr.Delivery, "-")
		switch {
		case gr.Announced:
			avg := "-"
			if gr.Requests > 0 {
				avg = roundDuration(gr.AverageProcessing).String()
			}
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%d\t%s\tits announcement\n", gr.Name, delivery, gr.Instances, gr.Requests, gr.Errors, avg)
		case gr.Delivery == gateway.DeliveryDurable:
			fmt.Fprintf(tw, "  %s\t%s\t-\t-\t-\t-\tits JetStream consumer\n", gr.Name, delivery)
		default:
			// Subscriptions NATS lists: instances and messages delivered.
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t-\t-\tits subscriptions\n", gr.Name, delivery, gr.Instances, gr.Requests)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, gr := range groups {
		if len(gr.Resources) > 0 {
			fmt.Fprintf(w, "  %s resources: %s\n", gr.Name, strings.Join(gr.Resources, ","))
		}
		if len(gr.Subjects) > 0 {
			fmt.Fprintf(w, "  %s subjects: %s\n", gr.Name, strings.Join(gr.Subjects, " "))
		}
	}
	return nil
}

// unservedOutcome says what becomes of a request to a listener
// (PORT/PROTOCOL) that no group serves.
func unservedOutcome(listener string) string {
	_, protocol, _ := schemas.ParseListener(listener)
	switch protocol {
	case schemas.ProtocolCoAP:
		return "CoAP requests get 4.04 Not Found at once"
	case schemas.ProtocolRPC:
		return "RPC requests get STATUS_UNIMPLEMENTED at once"
	}
	return "requests are released at once, with no reply"
}

// roundDuration rounds d to three significant digits, for reading.
func roundDuration(d time.Duration) time.Duration {
	for r := time.Duration(1); r < time.Hour; r *= 10 {
		if d < 1000*r && d > -1000*r {
			return d.Round(r)
		}
	}
	return d.Round(time.Second)
}
