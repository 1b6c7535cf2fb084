package dtls

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// MaxIdentity is the longest PSK identity a key file may hold, in bytes.
const MaxIdentity = 128

// ParseKeys parses a PSK file: one IDENTITY:KEY per line, the key as
// text or as hex after 0x; blank lines and lines starting with # are
// skipped, and spaces around the identity and the key are not part of
// them. An identity is printable ASCII without ':' (it travels in the
// udpgate-dtls-identity header), at most MaxIdentity bytes, listed once;
// a key is not empty. The error names every bad line.
func ParseKeys(b []byte) (map[string][]byte, error) {
	keys := map[string][]byte{}
	var bad []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		id, key, ok := strings.Cut(line, ":")
		id, key = strings.TrimSpace(id), strings.TrimSpace(key)
		switch {
		case !ok:
			bad = append(bad, fmt.Sprintf("line %d: want IDENTITY:KEY", n))
			continue
		case id == "":
			bad = append(bad, fmt.Sprintf("line %d: empty identity", n))
			continue
		case len(id) > MaxIdentity:
			bad = append(bad, fmt.Sprintf("line %d: identity longer than %d bytes", n, MaxIdentity))
			continue
		case strings.IndexFunc(id, func(r rune) bool { return r < 0x21 || r > 0x7e }) >= 0:
			bad = append(bad, fmt.Sprintf("line %d: identity %q: printable ASCII without spaces only", n, id))
			continue
		}
		var k []byte
		if h, isHex := strings.CutPrefix(key, "0x"); isHex {
			var err error
			if k, err = hex.DecodeString(h); err != nil {
				bad = append(bad, fmt.Sprintf("line %d: identity %s: the key after 0x is not hex", n, id))
				continue
			}
		} else {
			k = []byte(key)
		}
		if len(k) == 0 {
			bad = append(bad, fmt.Sprintf("line %d: identity %s: empty key", n, id))
			continue
		}
		if _, dup := keys[id]; dup {
			bad = append(bad, fmt.Sprintf("line %d: identity %s listed twice", n, id))
			continue
		}
		keys[id] = k
	}
	if err := sc.Err(); err != nil {
		bad = append(bad, err.Error())
	}
	if len(bad) > 0 {
		return nil, errors.New(strings.Join(bad, "; "))
	}
	return keys, nil
}

// DefaultCheckEvery is how often, at most, Keys looks at its file for a
// change.
const DefaultCheckEvery = time.Second

// Keys holds the pre-shared keys of DTLS listeners, read from a file
// (ParseKeys) and read again when it changes: a handshake looks at the
// file's modification time and size at most every CheckEvery, and a file
// that does not parse keeps the previous keys, logged and counted, until
// a later look parses it. Make it with LoadKeys; it is safe for
// concurrent use, and several listeners may share it.
type Keys struct {
	Path string
	// CheckEvery is how often, at most, the file is looked at
	// (DefaultCheckEvery if zero; negative: at every handshake).
	CheckEvery time.Duration
	Log        *slog.Logger

	keys            atomic.Pointer[map[string][]byte]
	mu              sync.Mutex // one look at a time; guards checked and seen
	checked         time.Time
	seen            fileStamp
	reloads, failed atomic.Uint64
}

// fileStamp is what tells that a file changed.
type fileStamp struct {
	mod  time.Time
	size int64
}

// LoadKeys reads the key file at path, or returns an error naming every
// bad line.
func LoadKeys(path string) (*Keys, error) {
	k := &Keys{Path: path}
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if err := k.load(); err != nil {
		return nil, err
	}
	k.seen, k.checked = fileStamp{st.ModTime(), st.Size()}, time.Now()
	return k, nil
}

func (k *Keys) load() error {
	b, err := os.ReadFile(k.Path)
	if err != nil {
		return err
	}
	keys, err := ParseKeys(b)
	if err != nil {
		return fmt.Errorf("%s: %w", k.Path, err)
	}
	k.keys.Store(&keys)
	return nil
}

// Lookup returns the key of identity.
func (k *Keys) Lookup(identity string) ([]byte, bool) {
	k.check(time.Now())
	m := k.keys.Load()
	if m == nil {
		return nil, false
	}
	key, ok := (*m)[identity]
	return key, ok
}

// Len returns how many identities the keys in use hold.
func (k *Keys) Len() int {
	if m := k.keys.Load(); m != nil {
		return len(*m)
	}
	return 0
}

// check reads the file again if it changed since the last look, at most
// every CheckEvery.
func (k *Keys) check(now time.Time) {
	every := k.CheckEvery
	if every == 0 {
		every = DefaultCheckEvery
	}
	if !k.mu.TryLock() {
		return // another handshake is looking
	}
	defer k.mu.Unlock()
	if now.Sub(k.checked) < every {
		return
	}
	k.checked = now
	st, err := os.Stat(k.Path)
	if err != nil {
		k.failed.Add(1)
		k.log().Warn("dtls: PSK file: keeping the keys in use", "file", k.Path, "err", err)
		return
	}
	stamp := fileStamp{st.ModTime(), st.Size()}
	if stamp == k.seen {
		return
	}
	k.seen = stamp
	if err := k.load(); err != nil {
		k.failed.Add(1)
		k.log().Warn("dtls: PSK file does not load: keeping the keys in use", "err", err)
		return
	}
	k.reloads.Add(1)
	k.log().Info("dtls: PSK file loaded again", "file", k.Path, "identities", k.Len())
}

// Reloads returns how many times the file was read again after a change,
// and how many looks failed (the file gone, or not parsing): the keys in
// use stayed.
func (k *Keys) Reloads() (loaded, failed uint64) { return k.reloads.Load(), k.failed.Load() }

func (k *Keys) log() *slog.Logger {
	if k.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return k.Log
}
