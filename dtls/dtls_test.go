package dtls

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	pion "github.com/pion/dtls/v3"
)

// echo is a DTLS listener on loopback whose Deliver answers every
// datagram with its identity and the datagram, through the session.
type echo struct {
	l         *Listener
	addr      *net.UDPAddr
	delivered atomic.Int64
}

func writeKeys(t testing.TB, text string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "psk")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func startEcho(t testing.TB, cfg *Config) *echo {
	t.Helper()
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	e := &echo{addr: conn.LocalAddr().(*net.UDPAddr)}
	local := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	e.l = &Listener{Conn: conn, Port: local.Port(), Config: cfg, Deliver: func(b []byte, _, _ netip.AddrPort, _ int, s *Session) {
		e.delivered.Add(1)
		s.Write(append([]byte(s.Identity()+" "), b...))
	}}
	if err := e.l.Start(); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		buf := make([]byte, 65536)
		for {
			n, remote, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			e.l.Receive(buf[:n], netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port()), local, 0, time.Now())
		}
	})
	t.Cleanup(func() {
		conn.Close()
		wg.Wait()
		e.l.Close()
	})
	return e
}

// dial shakes hands with pion's client over pc.
func dial(t testing.TB, pc net.PacketConn, to net.Addr, opts ...pion.ClientOption) (*pion.Conn, error) {
	t.Helper()
	c, err := pion.ClientWithOptions(pc, to, opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	return c, nil
}

func pskClient(identity, key string) []pion.ClientOption {
	return []pion.ClientOption{
		pion.WithPSK(func([]byte) ([]byte, error) { return []byte(key), nil }),
		pion.WithPSKIdentityHint([]byte(identity)),
		pion.WithCipherSuites(pion.TLS_PSK_WITH_AES_128_CCM_8),
	}
}

func udpSocket(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// roundTrip sends b and returns the reply.
func roundTrip(t testing.TB, c *pion.Conn, b []byte) []byte {
	t.Helper()
	if _, err := c.Write(b); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 2048)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

// eventually waits, a bounded number of times, for cond.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("never: %s", what)
}

func TestPSK(t *testing.T) {
	keys, err := LoadKeys(writeKeys(t, "# test keys\nalice: secret-1\n\nbob:0x73656372657432\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := startEcho(t, &Config{Keys: keys})
	for _, tc := range []struct{ id, key string }{{"alice", "secret-1"}, {"bob", "secret2"}} {
		c, err := dial(t, udpSocket(t), e.addr, pskClient(tc.id, tc.key)...)
		if err != nil {
			t.Fatalf("%s: handshake: %v", tc.id, err)
		}
		if got, want := roundTrip(t, c, []byte("hello")), []byte(tc.id+" hello"); !bytes.Equal(got, want) {
			t.Errorf("%s: reply %q, want %q", tc.id, got, want)
		}
	}
	st := e.l.Stats()
	if st.Handshakes[OutcomeOK] != 2 || st.Sessions != 2 || st.Records != 2 {
		t.Errorf("stats %+v, want 2 handshakes ok, 2 sessions, 2 records", st)
	}
}

func TestPSKRefused(t *testing.T) {
	keys, err := LoadKeys(writeKeys(t, "alice:secret\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := startEcho(t, &Config{Keys: keys, HandshakeTimeout: time.Second})
	for _, tc := range []struct {
		name, id, key, outcome string
	}{
		{"unknown identity", "mallory", "secret", OutcomeUnknownIdentity},
		{"wrong key", "alice", "guess", OutcomeBadKey},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := dial(t, udpSocket(t), e.addr, pskClient(tc.id, tc.key)...); err == nil {
				t.Fatal("handshake succeeded")
			}
			eventually(t, tc.outcome+" counted", func() bool { return e.l.Stats().Handshakes[tc.outcome] == 1 })
		})
	}
	eventually(t, "no session left", func() bool { return e.l.Stats().Sessions == 0 })
	if n := e.delivered.Load(); n != 0 {
		t.Errorf("%d datagrams delivered from refused peers", n)
	}
}

func TestKeysReloaded(t *testing.T) {
	path := writeKeys(t, "alice:one\n")
	keys, err := LoadKeys(path)
	if err != nil {
		t.Fatal(err)
	}
	keys.CheckEvery = -1
	if err := os.WriteFile(path, []byte("alice:two\ncarol:three\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(path, time.Now(), time.Now().Add(time.Minute)) // a new stamp even within the file system's time granularity
	if k, ok := keys.Lookup("carol"); !ok || string(k) != "three" {
		t.Fatalf("carol: %q %v after the file changed", k, ok)
	}
	if err := os.WriteFile(path, []byte("alice two\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chtimes(path, time.Now(), time.Now().Add(2*time.Minute))
	if k, ok := keys.Lookup("alice"); !ok || string(k) != "two" {
		t.Fatalf("alice: %q %v after a bad file, want the previous key", k, ok)
	}
	if loaded, failed := keys.Reloads(); loaded != 1 || failed != 1 {
		t.Errorf("reloads %d, failed %d; want 1 and 1", loaded, failed)
	}
}

func TestParseKeys(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     map[string]string
		bad      bool
	}{
		{"text and hex", "a:key\n b : 0x6869 \n#c:x\n", map[string]string{"a": "key", "b": "hi"}, false},
		{"colon in key", "a:k:e:y\n", map[string]string{"a": "k:e:y"}, false},
		{"no colon", "a key\n", nil, true},
		{"empty key", "a:\n", nil, true},
		{"bad hex", "a:0xzz\n", nil, true},
		{"twice", "a:1\na:2\n", nil, true},
		{"space in identity", "a b:1\n", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseKeys([]byte(tc.in))
			if (err != nil) != tc.bad {
				t.Fatalf("err %v, want bad %v", err, tc.bad)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			for id, k := range tc.want {
				if string(got[id]) != k {
					t.Errorf("%s: %q, want %q", id, got[id], k)
				}
			}
		})
	}
}

func FuzzParseKeys(f *testing.F) {
	f.Add([]byte("alice:secret\n# comment\n\nbob:0x0102\n"))
	f.Add([]byte("a:0x\n:b\nc\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		keys, err := ParseKeys(b)
		if err != nil {
			return
		}
		for id, k := range keys {
			if id == "" || len(id) > MaxIdentity || len(k) == 0 {
				t.Fatalf("accepted %q: %x", id, k)
			}
			for _, r := range id {
				if r < 0x21 || r > 0x7e {
					t.Fatalf("identity %q has %q", id, r)
				}
			}
		}
	})
}

// rebinding is a client's packet connection that moves to a new socket
// (a new source port) when told to, as a client behind a NAT whose
// binding changed: it reads from both sockets, writes from the current.
type rebinding struct {
	socks  [2]*net.UDPConn
	cur    atomic.Int32
	in     chan packet
	closed chan struct{}
	once   sync.Once
	rd     deadline
}

func newRebinding(t testing.TB) *rebinding {
	r := &rebinding{socks: [2]*net.UDPConn{udpSocket(t), udpSocket(t)}, in: make(chan packet, 64), closed: make(chan struct{})}
	for _, s := range r.socks {
		go func() {
			buf := make([]byte, 65536)
			for {
				n, from, err := s.ReadFromUDPAddrPort(buf)
				if err != nil {
					return
				}
				select {
				case r.in <- packet{bytes.Clone(buf[:n]), from}:
				case <-r.closed:
					return
				}
			}
		}()
	}
	return r
}

func (r *rebinding) ReadFrom(p []byte) (int, net.Addr, error) {
	select {
	case <-r.closed:
		return 0, nil, net.ErrClosed
	case <-r.rd.done():
		return 0, nil, os.ErrDeadlineExceeded
	case pk := <-r.in:
		return copy(p, pk.b), net.UDPAddrFromAddrPort(pk.from), nil
	}
}

func (r *rebinding) WriteTo(p []byte, addr net.Addr) (int, error) {
	return r.socks[r.cur.Load()].WriteTo(p, addr)
}

func (r *rebinding) Close() error {
	r.once.Do(func() { close(r.closed) })
	return nil
}

func (r *rebinding) LocalAddr() net.Addr                { return r.socks[r.cur.Load()].LocalAddr() }
func (r *rebinding) SetDeadline(t time.Time) error      { r.rd.set(t); return nil }
func (r *rebinding) SetReadDeadline(t time.Time) error  { r.rd.set(t); return nil }
func (r *rebinding) SetWriteDeadline(t time.Time) error { return nil }

func TestConnectionIDRebind(t *testing.T) {
	keys, err := LoadKeys(writeKeys(t, "alice:secret\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := startEcho(t, &Config{Keys: keys})
	r := newRebinding(t)
	c, err := dial(t, r, e.addr, append(pskClient("alice", "secret"), pion.WithConnectionIDGenerator(pion.OnlySendCIDGenerator()))...)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c, []byte("one")); string(got) != "alice one" {
		t.Fatalf("reply %q", got)
	}
	r.cur.Store(1) // the client's source port changes
	if got := roundTrip(t, c, []byte("two")); string(got) != "alice two" {
		t.Fatalf("reply after the rebind %q", got)
	}
	st := e.l.Stats()
	if st.Rebinds != 1 || st.Sessions != 1 || st.Handshakes[OutcomeOK] != 1 {
		t.Errorf("stats %+v, want 1 rebind, 1 session, 1 handshake", st)
	}
}

func TestNoSession(t *testing.T) {
	keys, err := LoadKeys(writeKeys(t, "alice:secret\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := startEcho(t, &Config{Keys: keys})
	c := udpSocket(t)
	// An application data record of epoch 1 from a stranger.
	rec := []byte{23, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 0, 4, 1, 2, 3, 4}
	if _, err := c.WriteTo(rec, e.addr); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the record counted", func() bool { return e.l.Stats().NoSession == 1 })
	if st := e.l.Stats(); st.Sessions != 0 {
		t.Errorf("%d sessions", st.Sessions)
	}
}

// refused tries a handshake that should not finish, for a second at most.
func refused(t *testing.T, e *echo, opts []pion.ClientOption) {
	t.Helper()
	c, err := pion.ClientWithOptions(udpSocket(t), e.addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := c.HandshakeContext(ctx); err == nil {
		t.Fatal("handshake succeeded")
	}
}

func TestBounds(t *testing.T) {
	keys, err := LoadKeys(writeKeys(t, "alice:secret\n"))
	if err != nil {
		t.Fatal(err)
	}
	t.Run("sessions", func(t *testing.T) {
		e := startEcho(t, &Config{Keys: keys, MaxSessions: 1, HandshakeRate: -1})
		if _, err := dial(t, udpSocket(t), e.addr, pskClient("alice", "secret")...); err != nil {
			t.Fatal(err)
		}
		refused(t, e, pskClient("alice", "secret"))
		if st := e.l.Stats(); st.Handshakes[OutcomeTableFull] < 1 || st.Sessions != 1 {
			t.Errorf("stats %+v, want table_full counted and 1 session", st)
		}
	})
	t.Run("handshake rate", func(t *testing.T) {
		e := startEcho(t, &Config{Keys: keys, HandshakeRate: 0.5}) // a burst of 1, then one every 2 s
		if _, err := dial(t, udpSocket(t), e.addr, pskClient("alice", "secret")...); err != nil {
			t.Fatal(err)
		}
		refused(t, e, pskClient("alice", "secret")) // the same source address, another port
		if st := e.l.Stats(); st.Handshakes[OutcomeRateLimited] < 1 || st.Handshakes[OutcomeOK] != 1 {
			t.Errorf("stats %+v, want rate_limited counted", st)
		}
	})
	t.Run("idle", func(t *testing.T) {
		e := startEcho(t, &Config{Keys: keys, Idle: 100 * time.Millisecond})
		c, err := dial(t, udpSocket(t), e.addr, pskClient("alice", "secret")...)
		if err != nil {
			t.Fatal(err)
		}
		if got := roundTrip(t, c, []byte("x")); string(got) != "alice x" {
			t.Fatalf("reply %q", got)
		}
		eventually(t, "the idle session closed", func() bool { st := e.l.Stats(); return st.Expired == 1 && st.Sessions == 0 })
	})
}

// FuzzReceive feeds any datagram from any address to a listener's
// routing: nothing panics, the table stays within its bounds, and only a
// datagram that starts as a ClientHello record starts a session.
func FuzzReceive(f *testing.F) {
	keys, err := LoadKeys(writeKeys(f, "alice:secret\n"))
	if err != nil {
		f.Fatal(err)
	}
	conn, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		f.Fatal(err)
	}
	defer conn.Close()
	local := conn.LocalAddr().(*net.UDPAddr).AddrPort()
	hello := []byte{22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0}
	f.Add(hello, uint16(1000))
	f.Add([]byte{25, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 0, 1, 0}, uint16(1001))
	f.Add([]byte{23, 0xfe, 0xfd, 0, 1}, uint16(1002))
	f.Fuzz(func(t *testing.T, b []byte, port uint16) {
		l := &Listener{Conn: conn, Port: local.Port(), Config: &Config{Keys: keys, MaxSessions: 2, HandshakeRate: -1},
			Deliver: func([]byte, netip.AddrPort, netip.AddrPort, int, *Session) { t.Error("delivered without a handshake") }}
		if err := l.Start(); err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		from := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port)
		for range 3 {
			l.Receive(b, from, local, 0, time.Now())
		}
		st := l.Stats()
		starts := len(b) > recordHeader && b[0] == contentHandshake && b[3] == 0 && b[4] == 0 && b[recordHeader] == clientHello
		if st.Sessions > 1 || st.Sessions == 1 && !starts {
			t.Fatalf("%d sessions for %x", st.Sessions, b)
		}
	})
}

// TestCloseNotifies: closing the listener ends its sessions with a
// close_notify, so that a client shakes hands again rather than send
// into a session nobody holds.
func TestCloseNotifies(t *testing.T) {
	keys, err := LoadKeys(writeKeys(t, "alice:secret\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := startEcho(t, &Config{Keys: keys})
	c, err := dial(t, udpSocket(t), e.addr, pskClient("alice", "secret")...)
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c, []byte("x"))
	e.l.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 64)); !errors.Is(err, io.EOF) {
		t.Errorf("read after the listener closed: %v, want EOF (close_notify)", err)
	}
}

// sharedSocket is one client socket that successive clients use in
// turn, as a device keeps its port across a restart: each view reads
// what arrives while it is open, and a closed view sends nothing (a
// client that crashed sends no close_notify).
type sharedSocket struct {
	c  *net.UDPConn
	in chan packet
}

func newSharedSocket(t *testing.T) *sharedSocket {
	s := &sharedSocket{c: udpSocket(t), in: make(chan packet, 64)}
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := s.c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			select {
			case s.in <- packet{bytes.Clone(buf[:n]), from}:
			default: // nobody reads: lost, as on a restarting device
			}
		}
	}()
	return s
}

type socketView struct {
	s      *sharedSocket
	closed chan struct{}
	once   sync.Once
	rd     deadline
}

func (s *sharedSocket) view() *socketView { return &socketView{s: s, closed: make(chan struct{})} }

func (v *socketView) ReadFrom(p []byte) (int, net.Addr, error) {
	select {
	case <-v.closed:
		return 0, nil, net.ErrClosed
	case <-v.rd.done():
		return 0, nil, os.ErrDeadlineExceeded
	case pk := <-v.s.in:
		return copy(p, pk.b), net.UDPAddrFromAddrPort(pk.from), nil
	}
}

func (v *socketView) WriteTo(p []byte, addr net.Addr) (int, error) {
	select {
	case <-v.closed:
		return len(p), nil
	default:
		return v.s.c.WriteTo(p, addr)
	}
}

func (v *socketView) Close() error                       { v.once.Do(func() { close(v.closed) }); return nil }
func (v *socketView) LocalAddr() net.Addr                { return v.s.c.LocalAddr() }
func (v *socketView) SetDeadline(t time.Time) error      { v.rd.set(t); return nil }
func (v *socketView) SetReadDeadline(t time.Time) error  { v.rd.set(t); return nil }
func (v *socketView) SetWriteDeadline(t time.Time) error { return nil }

// TestClientRestart: a client that restarts and shakes hands again from
// the address of its session (RFC 6347 §4.2.8) gets a new session, which
// replaces the old one once past the cookie exchange; a ClientHello
// that never echoes its cookie, as a spoofed one, ends nothing.
func TestClientRestart(t *testing.T) {
	keys, err := LoadKeys(writeKeys(t, "alice:secret\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := startEcho(t, &Config{Keys: keys, HandshakeRate: -1, HandshakeTimeout: 500 * time.Millisecond})
	sock := newSharedSocket(t)
	first := sock.view()
	c1, err := dial(t, first, e.addr, pskClient("alice", "secret")...)
	if err != nil {
		t.Fatal(err)
	}
	if got := roundTrip(t, c1, []byte("one")); string(got) != "alice one" {
		t.Fatalf("reply %q", got)
	}

	// A ClientHello from the session's address whose sender never sees
	// the HelloVerifyRequest: the session goes on.
	hello := []byte{22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 9, 0, 1, 1}
	e.l.Receive(hello, sock.c.LocalAddr().(*net.UDPAddr).AddrPort(), e.addr.AddrPort(), 0, time.Now())
	eventually(t, "the spoofed handshake given up", func() bool { return e.l.Stats().Handshaking == 0 })
	if got := roundTrip(t, c1, []byte("still")); string(got) != "alice still" {
		t.Fatalf("reply after a spoofed ClientHello %q", got)
	}

	first.Close() // the client crashes, and restarts on the same port
	c2, err := dial(t, sock.view(), e.addr, pskClient("alice", "secret")...)
	if err != nil {
		t.Fatalf("handshake after the restart: %v", err)
	}
	if got := roundTrip(t, c2, []byte("two")); string(got) != "alice two" {
		t.Fatalf("reply after the restart %q", got)
	}
	eventually(t, "the old session closed", func() bool { st := e.l.Stats(); return st.Sessions == 1 && st.Replaced == 1 })
}

// TestNoCookie: a ClientHello whose sender never echoes the cookie (a
// spoofed source) holds its handshake slot for CookieWait, not for
// HandshakeTimeout, and is counted no_cookie.
func TestNoCookie(t *testing.T) {
	keys, err := LoadKeys(writeKeys(t, "alice:secret\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := startEcho(t, &Config{Keys: keys, HandshakeTimeout: time.Hour})
	c, err := pion.ClientWithOptions(newDeaf(t), e.addr, pskClient("alice", "secret")...)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.HandshakeContext(ctx) // its ClientHello, and retransmissions
	eventually(t, "a handshake started", func() bool { return e.l.Stats().Handshaking == 1 })
	eventually(t, "no_cookie counted", func() bool { st := e.l.Stats(); return st.Handshakes[OutcomeNoCookie] >= 1 })
	cancel()
	if st := e.l.Stats(); st.Handshakes[OutcomeTimeout] != 0 || st.Handshakes[OutcomeOK] != 0 {
		t.Errorf("stats %+v", st)
	}
}

// deaf is a client's packet connection that sends and never receives:
// the HelloVerifyRequest goes nowhere, as it goes to a spoofed source.
type deaf struct {
	c      *net.UDPConn
	rd     deadline
	closed chan struct{}
	once   sync.Once
}

func newDeaf(t *testing.T) *deaf { return &deaf{c: udpSocket(t), closed: make(chan struct{})} }

func (d *deaf) ReadFrom([]byte) (int, net.Addr, error) {
	select {
	case <-d.rd.done():
		return 0, nil, os.ErrDeadlineExceeded
	case <-d.closed:
		return 0, nil, net.ErrClosed
	}
}

func (d *deaf) WriteTo(p []byte, addr net.Addr) (int, error) { return d.c.WriteTo(p, addr) }
func (d *deaf) Close() error                                 { d.once.Do(func() { close(d.closed) }); return nil }
func (d *deaf) LocalAddr() net.Addr                          { return d.c.LocalAddr() }
func (d *deaf) SetDeadline(t time.Time) error                { d.rd.set(t); return nil }
func (d *deaf) SetReadDeadline(t time.Time) error            { d.rd.set(t); return nil }
func (d *deaf) SetWriteDeadline(time.Time) error             { return nil }

// recorder is a client's packet connection that keeps what the client
// sends and delivers nothing.
type recorder struct {
	*deaf
	mu   sync.Mutex // guards sent
	sent [][]byte
}

func (r *recorder) WriteTo(p []byte, _ net.Addr) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent = append(r.sent, bytes.Clone(p))
	return len(p), nil
}

// TestSpoofedFlood: ClientHellos from more spoofed sources than there are
// handshake slots fill the slots (the rest counted table_full), give
// them back once their cookies do not come, and leave the listener to
// its real clients.
func TestSpoofedFlood(t *testing.T) {
	keys, err := LoadKeys(writeKeys(t, "alice:secret\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := startEcho(t, &Config{Keys: keys, MaxHandshakes: 64})
	// A real ClientHello, from pion's client.
	r := &recorder{deaf: newDeaf(t)}
	c, err := pion.ClientWithOptions(r, e.addr, pskClient("alice", "secret")...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go c.HandshakeContext(ctx)
	var hello []byte
	eventually(t, "a ClientHello sent", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		if len(r.sent) > 0 {
			hello = r.sent[0]
		}
		return hello != nil
	})
	cancel()
	c.Close()

	local := e.addr.AddrPort()
	for i := range 100 {
		from := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 2, byte(i)}), 40000)
		e.l.Receive(hello, from, local, 0, time.Now())
	}
	st := e.l.Stats()
	if st.Handshaking != 64 || st.Handshakes[OutcomeTableFull] != 36 {
		t.Errorf("stats %+v, want 64 handshakes and 36 table_full", st)
	}
	eventually(t, "the slots given back", func() bool {
		st := e.l.Stats()
		return st.Handshaking == 0 && st.Sessions == 0 && st.Handshakes[OutcomeNoCookie] == 64
	})
	if _, err := dial(t, udpSocket(t), e.addr, pskClient("alice", "secret")...); err != nil {
		t.Errorf("a real client after the flood: %v", err)
	}
}

// TestOutcomesCounted: every outcome has its counter.
func TestOutcomesCounted(t *testing.T) {
	var c counters
	if len(c.outcomes) != len(Outcomes) {
		t.Fatalf("%d outcome counters for %d outcomes", len(c.outcomes), len(Outcomes))
	}
}
