//go:build unix

package handover

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestHandOver: a UDP socket offered by one side is taken by the other,
// which reads from it the datagrams sent after the hand-over; the offer
// ends (its socket file removed), and the taker can offer on the same path.
func TestHandOver(t *testing.T) {
	path := filepath.Join(t.TempDir(), "handover.sock")
	old, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	handed := make(chan struct{})
	offered := make(chan error, 1)
	go func() {
		offered <- Offer(ctx, path, func() ([]Socket, error) {
			f, err := old.File()
			return []Socket{{Name: "9000/raw", File: f}}, err
		}, func() { close(handed) })
	}()
	var taken *Taken
	for taken == nil {
		taken, err = Take(ctx, path)
		if errors.Is(err, ErrNoOffer) { // the offer is not listening yet
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(taken.Sockets) != 1 || taken.Sockets[0].Name != "9000/raw" {
		t.Fatalf("took %+v", taken.Sockets)
	}
	pc, err := net.FilePacketConn(taken.Sockets[0].File)
	if err != nil {
		t.Fatal(err)
	}
	taken.Sockets[0].File.Close()
	defer pc.Close()
	if pc.LocalAddr().String() != old.LocalAddr().String() {
		t.Errorf("took %v, offered %v", pc.LocalAddr(), old.LocalAddr())
	}
	if err := taken.Ready(ctx); err != nil {
		t.Fatal(err)
	}
	<-handed
	if err := <-offered; err != nil {
		t.Errorf("Offer: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the socket file is still there after the hand-over: %v", err)
	}
	// The old process stops reading and closes its copy: the socket
	// lives on in the new one.
	old.Close()
	c, err := net.DialUDP("udp", nil, pc.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("after"))
	buf := make([]byte, 16)
	pc.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := pc.ReadFrom(buf)
	if err != nil || string(buf[:n]) != "after" {
		t.Errorf("the new process read %q, %v", buf[:n], err)
	}
	// And it offers on the same path now.
	again := make(chan error, 1)
	octx, ocancel := context.WithCancel(ctx)
	go func() { again <- Offer(octx, path, func() ([]Socket, error) { return nil, nil }, func() {}) }()
	time.Sleep(50 * time.Millisecond)
	ocancel()
	if err := <-again; err != nil {
		t.Errorf("offering again on %s: %v", path, err)
	}
}

// TestTakeWithoutOffer: no process offers: ErrNoOffer, whether the socket
// file is missing or stale.
func TestTakeWithoutOffer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "handover.sock")
	if _, err := Take(context.Background(), path); !errors.Is(err, ErrNoOffer) {
		t.Errorf("no file: %v, want ErrNoOffer", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close() // a stale file, as a killed process leaves
	if _, err := Take(context.Background(), path); !errors.Is(err, ErrNoOffer) {
		t.Errorf("stale file: %v, want ErrNoOffer", err)
	}
	// Offering replaces the stale file.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Offer(ctx, path, func() ([]Socket, error) { return nil, nil }, func() {}) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Offer over a stale file: %v", err)
	}
}

// TestOfferRefusesARunningOffer: a second process cannot offer on the path
// of a running one.
func TestOfferRefusesARunningOffer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "handover.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go Offer(ctx, path, func() ([]Socket, error) { return nil, nil }, func() {})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first offer never listened")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := Offer(context.Background(), path, nil, nil); err == nil {
		t.Error("a second offer on a running one's path was accepted")
	}
}
