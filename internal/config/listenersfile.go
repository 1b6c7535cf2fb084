package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/schemas"
)

// MaxListenersFile is the largest listener file read, in bytes.
const MaxListenersFile = 1 << 20

// fileKeys are the keys of a listener in the listener file, in the
// order their options are written in Listener.Options: the listener's
// own, then the options of a UDPGATE_LISTENERS entry (listenerOptions).
var fileKeys = []string{
	"port", "address", "protocol",
	"reply", "push", "group", "df", "identity", "allow", "deny", "trust", "rate", "burst", "source_prefix", "listener_rate", "listener_burst", "amplification",
	"path", "conn_rate",
}

// ReadListenersFile reads the listener file at path (UDPGATE_LISTENERS_FILE)
// and checks it as ParseListenersFile does. It returns the file's
// content too, nil if it could not be read: a missing file is an error.
func ReadListenersFile(path string, taken []Listener) ([]Listener, []byte, error) {
	data, err := readFile(path)
	if err != nil {
		return nil, nil, &Error{Problems: []string{Prefix + "_LISTENERS_FILE: " + err.Error()}}
	}
	ls, err := ParseListenersFile(path, data, taken)
	return ls, data, err
}

// readFile reads at most MaxListenersFile bytes of path.
func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxListenersFile+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(data) > MaxListenersFile {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, MaxListenersFile)
	}
	return data, nil
}

// ParseListenersFile parses data, the listener file named name: a YAML
// mapping whose one key, listeners, lists a mapping per listener with the
// keys of a UDPGATE_LISTENERS entry,
//
//	listeners:
//	  - port: 9100            # required, 1..65535
//	    protocol: raw         # raw (the default), coap, rpc, ws or wss
//	    address: 10.0.0.7     # 0.0.0.0 by default; IPv6 like "::" too
//	    reply: off            # raw only: ingest, never answer
//	    push: on              # raw only: workers may send unprompted
//	    group: [224.0.1.187%eth0] # raw and coap on a wildcard address
//	    df: on                # replies not fragmented
//	  - port: 5684
//	    protocol: coap
//	    rate: 50              # and burst, source_prefix, listener_rate,
//	    allow: [10.0.0.0/8]   # listener_burst, amplification, deny, trust
//	  - port: 8081
//	    protocol: ws          # wss: over TLS (UDPGATE_WSS_CERT_FILE)
//	    path: /rpc            # ws only: where the WebSocket is served
//	    conn_rate: 20         # ws only: messages per second per connection
//
// A ws or wss listener takes the guard's keys but trust and
// amplification (its calls come over TCP), and no reply or push; push:
// on is for raw listeners only; path and
// conn_rate are for ws and wss listeners only: the rules of
// UDPGATE_LISTENERS. A wss listener needs the certificate files, which
// the caller checks. An empty file, or an empty or missing list, has no
// listeners. A port
// may be listed once, and not at all if a listener in taken has it
// (UDPGATE_LISTENERS and the built-in listeners, which the file cannot
// change). Every problem is reported, each with the file's name, its
// line and the listener's index, in one *Error.
func ParseListenersFile(name string, data []byte, taken []Listener) (ls []Listener, err error) {
	p := &fileParser{name: name}
	defer func() {
		// The YAML decoder is not ours: whatever it does with a hostile
		// file, the caller gets an error.
		if r := recover(); r != nil {
			ls, err = nil, &Error{Problems: []string{p.prefix(0) + fmt.Sprintf("not YAML the parser can read (%v)", r)}}
		}
	}()
	ls = p.parse(data, taken)
	if len(p.problems) > 0 {
		return nil, &Error{Problems: p.problems}
	}
	return ls, nil
}

// fileParser gathers the problems of one listener file.
type fileParser struct {
	name     string
	problems []string
}

func (p *fileParser) prefix(line int) string {
	if line > 0 {
		return Prefix + "_LISTENERS_FILE: " + p.name + ":" + strconv.Itoa(line) + ": "
	}
	return Prefix + "_LISTENERS_FILE: " + p.name + ": "
}

// bad records a problem at line (0 if none applies).
func (p *fileParser) bad(line int, format string, args ...any) {
	p.problems = append(p.problems, p.prefix(line)+fmt.Sprintf(format, args...))
}

func (p *fileParser) parse(data []byte, taken []Listener) []Listener {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if !errors.Is(err, io.EOF) {
			p.bad(0, "%v", err)
		}
		return nil // empty: no listeners
	}
	var more yaml.Node
	if err := dec.Decode(&more); !errors.Is(err, io.EOF) {
		p.bad(more.Line, "more than one YAML document")
		return nil
	}
	root := deref(&doc)
	if root.Kind == yaml.DocumentNode {
		if len(root.Content) == 0 {
			return nil // comments only
		}
		root = deref(root.Content[0])
	}
	if isNull(root) {
		return nil
	}
	if root.Kind != yaml.MappingNode {
		p.bad(root.Line, "want a mapping with one key, listeners")
		return nil
	}
	var list *yaml.Node
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := deref(root.Content[i]), deref(root.Content[i+1])
		if line, dup := seen[k.Value]; dup {
			p.bad(k.Line, "%s given twice (first on line %d)", k.Value, line)
			continue
		}
		seen[k.Value] = k.Line
		if k.Value != "listeners" {
			p.bad(k.Line, "unknown key %q: the file has one key, listeners", k.Value)
			continue
		}
		list = v
	}
	if list == nil || isNull(list) {
		return nil
	}
	if list.Kind != yaml.SequenceNode {
		p.bad(list.Line, "listeners: want a list of listeners (- port: 9100 ...)")
		return nil
	}
	var out []Listener
	byPort := map[uint16]int{} // listed ports: their index in the file
	lines := make([]int, len(list.Content))
	for i, n := range list.Content {
		lines[i] = n.Line // an alias's own line
		n = deref(n)
		l, ok := p.listener(i, n)
		if !ok {
			continue
		}
		port := l.Addr.Port()
		if j, dup := byPort[port]; dup {
			p.bad(lines[i], "listeners[%d]: port %d is listeners[%d]'s already (line %d): one listener per port", i, port, j, lines[j])
			continue
		}
		byPort[port] = i
		if k := slices.IndexFunc(taken, func(t Listener) bool { return t.Addr.Port() == port }); k >= 0 {
			p.bad(lines[i], "listeners[%d]: port %d is served by %s already (UDPGATE_LISTENERS or a built-in listener), which the file cannot change", i, port, taken[k])
			continue
		}
		out = append(out, l)
	}
	return out
}

// listener checks the listener n, the i-th of the list, and reports
// whether it is good.
func (p *fileParser) listener(i int, n *yaml.Node) (Listener, bool) {
	before := len(p.problems)
	bad := func(line int, format string, args ...any) {
		p.bad(line, "listeners[%d]: "+format, append([]any{i}, args...)...)
	}
	if n.Kind != yaml.MappingNode {
		bad(n.Line, "want a mapping with port, protocol and the listener's options")
		return Listener{}, false
	}
	values := map[string]string{}
	lineOf := map[string]int{}
	for j := 0; j+1 < len(n.Content); j += 2 {
		k, v := deref(n.Content[j]), deref(n.Content[j+1])
		key := k.Value
		if !slices.Contains(fileKeys, key) {
			bad(k.Line, "unknown key %q (known: %s)", key, strings.Join(fileKeys, ", "))
			continue
		}
		if line, dup := lineOf[key]; dup {
			bad(k.Line, "%s given twice (first on line %d)", key, line)
			continue
		}
		lineOf[key] = k.Line
		s, err := fileValue(key, v)
		if err != nil {
			bad(v.Line, "%s: %v", key, err)
			continue
		}
		values[key] = s
	}
	l := Listener{Protocol: schemas.ProtocolRaw}
	var port uint16
	if s, ok := values["port"]; !ok {
		if _, given := lineOf["port"]; !given {
			bad(n.Line, "port is missing")
		}
	} else if u, err := strconv.ParseUint(s, 10, 16); err != nil || u == 0 {
		bad(lineOf["port"], "port %q is not 1..65535", s)
	} else {
		port = uint16(u)
	}
	addr := netip.IPv4Unspecified()
	if s, ok := values["address"]; ok {
		a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]"))
		if err != nil {
			bad(lineOf["address"], "address %q is not an IPv4 or IPv6 address", s)
		} else {
			addr = a.Unmap()
		}
	}
	l.Addr = netip.AddrPortFrom(addr, port)
	proto := l.Protocol // as UDPGATE_LISTENERS writes it: wss for a ws listener over TLS
	if s, ok := values["protocol"]; ok {
		switch s {
		case schemas.ProtocolRaw, schemas.ProtocolCoAP, schemas.ProtocolRPC, schemas.ProtocolWS:
			l.Protocol, proto = s, s
		case ProtocolWSS:
			l.Protocol, proto = schemas.ProtocolWS, s
		case ProtocolCoAPS:
			l.Protocol, l.DTLS, proto = schemas.ProtocolCoAP, true, s
		case ProtocolDTLS:
			l.Protocol, l.DTLS, proto = schemas.ProtocolRaw, true, s
		default:
			bad(lineOf["protocol"], "unknown protocol %q (supported: raw, coap, rpc, ws, wss, coaps, dtls)", s)
		}
	}
	var opts []string
	for _, key := range fileKeys[3:] {
		s, ok := values[key]
		if !ok {
			continue
		}
		switch {
		case l.Protocol == schemas.ProtocolWS && slices.Contains(udpOnlyOptions, key):
			bad(lineOf[key], "%s is for UDP listeners (a ws listener's calls come over TCP)", key)
			continue
		case l.Protocol != schemas.ProtocolWS && slices.Contains(wsOnlyOptions, key):
			bad(lineOf[key], "%s is for ws and wss listeners", key)
			continue
		}
		switch key {
		case "path":
			if !strings.HasPrefix(s, "/") || strings.ContainsAny(s, "?# ") {
				bad(lineOf[key], "path %q: want an absolute path like /rpc", s)
				continue
			}
		case "conn_rate":
			var r float64
			if err := parseRate(key, s, &r); err != nil {
				bad(lineOf[key], "%v", err)
				continue
			}
		}
		if key == "path" || key == "conn_rate" {
			opts = append(opts, key+"="+s)
			continue
		}
		switch key {
		case "reply", "push", "df":
			on, ok := fileSwitch(s)
			if !ok {
				bad(lineOf[key], "%s %q: want on or off", key, s)
				continue
			}
			if on == (key == "reply") {
				continue // the default: nothing to write
			}
			s = "off"
			if on {
				s = "on"
			}
		}
		switch key {
		case "reply":
			if l.Protocol != schemas.ProtocolRaw {
				bad(lineOf[key], "reply: off is for raw listeners: CoAP and RPC clients expect an answer")
				continue
			}
			if l.DTLS {
				bad(lineOf[key], "reply: off is not for dtls listeners (not built yet)")
				continue
			}
			l.NoReply = true
		case "push":
			if l.Protocol != schemas.ProtocolRaw {
				bad(lineOf[key], "push: on is for raw listeners")
				continue
			}
			if l.DTLS {
				bad(lineOf[key], "push: on is not for dtls listeners (not built yet)")
				continue
			}
			l.Push = true
		case "df": // checked above
		case "group":
			if _, err := parseGroups(s); err != nil {
				bad(lineOf[key], "group: %v", err)
				continue
			}
		case "identity":
			if _, err := parseIdentities(s); err != nil {
				bad(lineOf[key], "identity: %v", err)
				continue
			}
			if !l.DTLS {
				bad(lineOf[key], "identity is for coaps and dtls listeners: only a DTLS session authenticates its peer")
				continue
			}
		default:
			var c guard.Config
			if err := setGuard(&c, key, s); err != nil {
				bad(lineOf[key], "%v", err)
				continue
			}
		}
		opts = append(opts, key+"="+s)
	}
	l.Options = strings.Join(opts, ";")
	if len(p.problems) > before {
		return Listener{}, false
	}
	// The listener is what UDPGATE_LISTENERS makes of the same entry:
	// the checks above are its checks, so this finds nothing new.
	entry := l.Addr.String() + "/" + proto
	if l.Options != "" {
		entry += ";" + l.Options
	}
	el, err := parseListener(entry)
	if err != nil {
		bad(n.Line, "%v", err)
		return Listener{}, false
	}
	return el, true
}

// fileValue returns the text of a listener key's value v: a scalar, or
// for the prefix lists, source_prefix and group a list of scalars too.
func fileValue(key string, v *yaml.Node) (string, error) {
	var s string
	switch {
	case v.Kind == yaml.ScalarNode && !isNull(v):
		s = strings.TrimSpace(v.Value)
	case v.Kind == yaml.SequenceNode && (key == "allow" || key == "deny" || key == "trust" || key == "source_prefix" || key == "group" || key == "identity"):
		parts := make([]string, 0, len(v.Content))
		for _, e := range v.Content {
			e = deref(e)
			if e.Kind != yaml.ScalarNode || isNull(e) {
				return "", errors.New("want a list of values")
			}
			parts = append(parts, strings.TrimSpace(e.Value))
		}
		sep := " "
		if key == "source_prefix" {
			sep = ","
		}
		s = strings.Join(parts, sep)
	case isNull(v):
		return "", errors.New("no value")
	default:
		return "", errors.New("want a value, not a mapping or a list")
	}
	if s == "" && key != "allow" && key != "deny" && key != "trust" {
		return "", errors.New("no value")
	}
	// An option's value ends at the next ; in Listener.Options.
	if strings.ContainsAny(s, ";\n") {
		return "", fmt.Errorf("%q holds a ; or a line break", s)
	}
	return s, nil
}

// deref follows an alias to the node it names.
func deref(n *yaml.Node) *yaml.Node {
	for i := 0; n.Kind == yaml.AliasNode && n.Alias != nil && i < 16; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == 0 || n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// fileSwitch reads the value of an on/off key of the listener file: on or
// true, off or false.
func fileSwitch(s string) (on, ok bool) {
	switch s {
	case "on", "true":
		return true, true
	case "off", "false":
		return false, true
	}
	return false, false
}
