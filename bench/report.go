package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// WriteText writes res for a person to read.
func WriteText(w io.Writer, res Result) error {
	var how string
	sockets := "sockets"
	if strings.HasPrefix(res.Target, "ws:") || strings.HasPrefix(res.Target, "wss:") {
		sockets = "connections"
	}
	if res.Mode == "open" {
		how = fmt.Sprintf("open loop at %s requests/s on %d %s", group(res.TargetRate), res.Sockets, sockets)
	} else {
		how = fmt.Sprintf("closed loop, %d in flight on %d %s", res.Concurrency, res.Sockets, sockets)
	}
	if res.SocketsOpened > int64(res.Sockets) {
		how += fmt.Sprintf(" (%s opened in all)", group(float64(res.SocketsOpened)))
	}
	_, err := fmt.Fprintf(w, "%s: %s, %s\n", res.Target, how, res.Elapsed.Round(time.Millisecond))
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "  requests/s  %s\n", group(res.Rate))
	if res.Answered > 0 {
		l := res.Latency
		fmt.Fprintf(w, "  latency     min %s  p50 %s  p90 %s  p99 %s  p99.9 %s  max %s\n",
			Short(l.Min), Short(l.P50), Short(l.P90), Short(l.P99), Short(l.P999), Short(l.Max))
	}
	fmt.Fprintf(w, "  sent %s  answered %s  lost %s  errors %s",
		group(float64(res.Sent)), group(float64(res.Answered)), group(float64(res.Lost)), group(float64(res.Errors)))
	if res.Failed > 0 {
		fmt.Fprintf(w, " (%s error replies)", group(float64(res.Failed)))
	}
	if res.Behind > 0 {
		fmt.Fprintf(w, "  behind %s (the generator could not keep the rate)", group(float64(res.Behind)))
	}
	fmt.Fprintln(w)
	if res.FirstError != "" {
		fmt.Fprintf(w, "  first error: %s\n", res.FirstError)
	}
	return nil
}

// WriteJSON writes res as one JSON object and a newline.
func WriteJSON(w io.Writer, res Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(res)
}

// Short formats d with three significant digits: 45.2µs, 1.23ms, 2.50s.
func Short(d time.Duration) string {
	switch {
	case d < time.Microsecond:
		return strconv.FormatInt(int64(d), 10) + "ns"
	case d < time.Millisecond:
		return sig3(float64(d)/1e3) + "µs"
	case d < time.Second:
		return sig3(float64(d)/1e6) + "ms"
	default:
		return sig3(float64(d)/1e9) + "s"
	}
}

func sig3(v float64) string {
	switch {
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	default:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
}

// group formats v rounded to an integer with thousands separators.
func group(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	neg := s[0] == '-'
	if neg {
		s = s[1:]
	}
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}
