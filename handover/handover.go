//go:build unix

// Package handover passes a gateway's sockets to a new gateway process on
// the same host, so that it can be upgraded or restarted without losing a
// datagram: the running process offers its sockets on a Unix socket; the
// new one takes them (SCM_RIGHTS, as nginx and Envoy pass theirs on a hot
// restart), serves them, and says so; then the old one stops reading and
// drains. Both read the same kernel sockets while they overlap, so nothing
// that arrives is lost, and replies to the old process's requests leave
// through the same sockets. A listening TCP socket (the HTTP endpoint's,
// a ws listener's) is passed the same way: connections wait in its
// backlog, never refused, while the new process takes over.
//
// The protocol, on a Unix stream socket: the new process connects; the old
// one sends one line of JSON, {"version": 1, "sockets": [NAME, ...]}, with
// the sockets' descriptors in the same order as SCM_RIGHTS; the new one
// answers "ready\n" once it serves them; the old one stops offering
// (removes the socket file), answers "bye\n", and stops.
package handover

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
)

// Version is the protocol's version.
const Version = 1

// maxSockets bounds the sockets one hand-over passes (the kernel's limit
// of descriptors per message is 253).
const maxSockets = 250

// Socket is one socket handed over: its name (what it serves, as both
// processes call it) and its descriptor.
type Socket struct {
	Name string
	File *os.File
}

// ErrNoOffer is returned by Take when no process offers sockets on the
// path: the new process binds its own.
var ErrNoOffer = errors.New("handover: no process offers sockets")

// hello is the old process's first line.
type hello struct {
	Version int      `json:"version"`
	Sockets []string `json:"sockets"`
}

// Offer offers sockets on the Unix socket path until ctx ends or one
// hand-over has completed. For each process that connects, it sends the
// sockets that sockets returns (closing their files after), and waits for
// it to say that it serves them; then it removes path, answers, and
// calls handedOver, and returns nil. A process that disconnects before
// saying so leaves the offer open for the next one. A stale socket file
// at path (no process listening on it) is replaced.
func Offer(ctx context.Context, path string, sockets func() ([]Socket, error), handedOver func()) error {
	ln, err := listen(path)
	if err != nil {
		return err
	}
	defer ln.Close()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		c, err := ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("handover: accept on %s: %w", path, err)
		}
		if done := offerTo(c, sockets, func() {
			ln.SetUnlinkOnClose(true)
			ln.Close()
		}); done {
			handedOver()
			return nil
		}
	}
}

// listen listens on path, replacing a stale socket file but refusing one
// that a process still listens on.
func listen(path string) (*net.UnixListener, error) {
	addr := &net.UnixAddr{Name: path, Net: "unix"}
	ln, err := net.ListenUnix("unix", addr)
	if err == nil {
		return ln, nil
	}
	if c, derr := net.DialUnix("unix", nil, addr); derr == nil {
		c.Close()
		return nil, fmt.Errorf("handover: a process already offers sockets on %s", path)
	}
	if rerr := os.Remove(path); rerr != nil && !os.IsNotExist(rerr) {
		return nil, fmt.Errorf("handover: listen on %s: %w", path, err)
	}
	ln, err = net.ListenUnix("unix", addr)
	if err != nil {
		return nil, fmt.Errorf("handover: listen on %s: %w", path, err)
	}
	return ln, nil
}

// offerTo hands the sockets to the process on c; it reports whether that
// process took them, after calling unlisten and answering it.
func offerTo(c *net.UnixConn, sockets func() ([]Socket, error), unlisten func()) bool {
	defer c.Close()
	ss, err := sockets()
	if err != nil {
		return false
	}
	defer func() {
		for _, s := range ss {
			s.File.Close()
		}
	}()
	h := hello{Version: Version}
	fds := make([]int, len(ss))
	for i, s := range ss {
		h.Sockets = append(h.Sockets, s.Name)
		fds[i] = int(s.File.Fd())
	}
	line, err := json.Marshal(h)
	if err != nil || len(ss) > maxSockets {
		return false
	}
	if _, _, err := c.WriteMsgUnix(append(line, '\n'), syscall.UnixRights(fds...), nil); err != nil {
		return false
	}
	r := bufio.NewReader(c)
	if msg, err := r.ReadString('\n'); err != nil || msg != "ready\n" {
		return false
	}
	unlisten()
	c.Write([]byte("bye\n"))
	return true
}

// Taken are the sockets a new process took over.
type Taken struct {
	Sockets []Socket
	conn    *net.UnixConn
}

// Take asks the process offering sockets on path for them. It returns
// ErrNoOffer when nothing listens there. The caller serves the sockets,
// then calls Ready.
func Take(ctx context.Context, path string) (*Taken, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return nil, ErrNoOffer
		}
		return nil, fmt.Errorf("handover: connect to %s: %w", path, err)
	}
	c := nc.(*net.UnixConn)
	if dl, ok := ctx.Deadline(); ok {
		c.SetReadDeadline(dl)
	} else {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
	}
	buf := make([]byte, 64<<10)
	oob := make([]byte, syscall.CmsgSpace(maxSockets*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("handover: read from %s: %w", path, err)
	}
	files, err := parseRights(oob[:oobn])
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("handover: from %s: %w", path, err)
	}
	var h hello
	line, _, _ := strings.Cut(string(buf[:n]), "\n")
	if err := json.Unmarshal([]byte(line), &h); err != nil || h.Version != Version || len(h.Sockets) != len(files) {
		for _, f := range files {
			f.Close()
		}
		c.Close()
		return nil, fmt.Errorf("handover: %s speaks another protocol (version %d, %d names for %d sockets)", path, h.Version, len(h.Sockets), len(files))
	}
	t := &Taken{conn: c}
	for i, name := range h.Sockets {
		t.Sockets = append(t.Sockets, Socket{Name: name, File: files[i]})
	}
	c.SetReadDeadline(time.Time{})
	return t, nil
}

// parseRights returns the descriptors passed in a control message.
func parseRights(oob []byte) ([]*os.File, error) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var files []*os.File
	for _, m := range msgs {
		fds, err := syscall.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "handover"))
		}
	}
	return files, nil
}

// Ready tells the old process that this one serves the sockets, and waits
// (at most until ctx ends) for it to stop offering them, so that this
// process may offer them on the same path. The files of Sockets may be
// closed once they are wrapped (net.FilePacketConn, net.FileListener).
func (t *Taken) Ready(ctx context.Context) error {
	defer t.conn.Close()
	stop := context.AfterFunc(ctx, func() { t.conn.SetReadDeadline(time.Now()) })
	defer stop()
	if _, err := t.conn.Write([]byte("ready\n")); err != nil {
		return fmt.Errorf("handover: %w", err)
	}
	msg, err := bufio.NewReader(t.conn).ReadString('\n')
	if err != nil || msg != "bye\n" {
		return fmt.Errorf("handover: the old process did not let go: %q, %v", msg, err)
	}
	return nil
}
