package coap

import (
	"net/url"
	"strings"
	"unsafe"
)

// bytesString returns b as a string without copying: for calls that
// neither keep the string nor outlive b's contents.
func bytesString(b []byte) string { return unsafe.String(unsafe.SliceData(b), len(b)) }

// unreserved reports whether s holds only RFC 3986's unreserved
// characters, which percent-encoding leaves as they are.
func unreserved(s []byte) bool {
	for _, c := range s {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~') {
			return false
		}
	}
	return true
}

// escapedMax bounds the length of s percent-encoded.
func escapedMax(s []byte) int {
	if unreserved(s) {
		return len(s)
	}
	return 3 * len(s)
}

// appendPathEscaped appends the Uri-Path segment s as url.PathEscape
// encodes it.
func appendPathEscaped(dst, s []byte) []byte {
	if unreserved(s) {
		return append(dst, s...)
	}
	return append(dst, url.PathEscape(string(s))...)
}

// appendQueryEscaped appends the Uri-Query option s percent-encoded as
// RFC 3986 does, name and value separately: every byte but the unreserved
// ones is %XX (a space is %20, never '+'), except for the first '=', which
// separates them. url.PathUnescape, or any RFC 3986 decoder, reverses it.
func appendQueryEscaped(dst, s []byte) []byte {
	if unreserved(s) {
		return append(dst, s...)
	}
	const hex = "0123456789ABCDEF"
	sep := false
	for _, c := range s {
		switch {
		case c == '=' && !sep:
			sep = true
			dst = append(dst, c)
		case 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.' || c == '~':
			dst = append(dst, c)
		default:
			dst = append(dst, '%', hex[c>>4], hex[c&0x0f])
		}
	}
	return dst
}

// SplitPath returns the segments of a percent-encoded path, such as
// Request.Path or a Location-Path header, decoded: "/a/b%2Fc" gives "a"
// and "b/c"; "/" and "" give nil. A segment that does not decode is
// returned as it is.
func SplitPath(p string) []string {
	p = strings.TrimPrefix(p, "/")
	if p == "" {
		return nil
	}
	parts := strings.Split(p, "/")
	for i, s := range parts {
		if u, err := url.PathUnescape(s); err == nil {
			parts[i] = u
		}
	}
	return parts
}

// QueryOptions returns the request's Uri-Query options, decoded, in
// order; nil if it has none.
func (r *Request) QueryOptions() []string {
	if r.Query == "" {
		return nil
	}
	return SplitQuery(r.Query)
}

// SplitQuery returns the options of a percent-encoded query, such as
// Request.Query or a Location-Query header, decoded, in order: "a=1%262&b"
// gives "a=1&2" and "b"; a '+' stays a '+' (RFC 3986, not HTML forms). A
// key or value that does not decode becomes "".
func SplitQuery(s string) []string {
	var out []string
	for _, part := range strings.Split(s, "&") {
		k, v, ok := strings.Cut(part, "=")
		k, _ = url.PathUnescape(k)
		if ok {
			v, _ = url.PathUnescape(v)
			out = append(out, k+"="+v)
		} else {
			out = append(out, k)
		}
	}
	return out
}
