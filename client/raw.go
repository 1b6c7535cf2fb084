package client

import (
	"bytes"
	"encoding/json"
)

// rawMatcher matches replies to a udp:// request. A request that is a JSON
// array, [id, ...], asks for a reply that is a JSON array with the same
// first element (compared after removing insignificant white space), as the
// built-in time worker answers; any other request takes the first datagram
// from the target as its reply.
func rawMatcher(payload []byte) matcher {
	id, ok := jsonID(payload)
	if !ok {
		return func([]byte) (bool, string) { return true, "" }
	}
	return func(reply []byte) (bool, string) {
		got, ok := jsonID(reply)
		if !ok {
			return false, "not a JSON array [id, ...] answering the request"
		}
		if !bytes.Equal(got, id) {
			return false, "reply id " + string(got) + " does not match request id " + string(id)
		}
		return true, ""
	}
}

// jsonID returns the compacted first element of a non-empty JSON array.
func jsonID(b []byte) ([]byte, bool) {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '[' {
		return nil, false
	}
	var arr []json.RawMessage
	if json.Unmarshal(b, &arr) != nil || len(arr) == 0 {
		return nil, false
	}
	var id bytes.Buffer
	if json.Compact(&id, arr[0]) != nil {
		return nil, false
	}
	return id.Bytes(), true
}
