// Package netnstest gives tests two network namespaces joined by a veth
// pair, for what needs real interfaces (multicast, broadcast, the path
// MTU) without touching the host's network: a gateway side and a client
// side, each with an IPv4 address in one /24, an IPv6 address in one
// /64, its link-local address, and routes for multicast on the link.
//
// It needs root and the ip command. Without them New skips the test,
// except under CI=true, where it fails it: CI runs as root.
package netnstest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

// Link is one end of the pair, in its namespace.
type Link struct {
	Namespace string // the namespace's name (ip netns)
	Name      string // the veth interface's name in it
	IP4       netip.Addr
	IP6       netip.Addr
}

// Pair is two namespaces joined by a veth pair.
type Pair struct {
	Gateway, Client Link
	// Broadcast is the IPv4 subnet's broadcast address.
	Broadcast netip.Addr
	// MTU is the links' MTU.
	MTU int
}

// Options for New.
type Options struct {
	// MTU of both ends of the pair; 0 leaves the kernel's default (1500).
	MTU int
}

var seq atomic.Int64

// New makes a pair of namespaces and links, named for the test process
// and unique in it, and deletes them when the test ends, failed or not.
func New(t testing.TB, o Options) *Pair {
	t.Helper()
	need(t)
	n := seq.Add(1)
	pid := os.Getpid()
	p := &Pair{
		Gateway:   Link{Namespace: fmt.Sprintf("udpgate-%d-%d-gw", pid, n), Name: fmt.Sprintf("ug%dn%d", pid, n)},
		Client:    Link{Namespace: fmt.Sprintf("udpgate-%d-%d-cl", pid, n), Name: fmt.Sprintf("uc%dn%d", pid, n)},
		Broadcast: netip.MustParseAddr("10.77.0.255"),
		MTU:       o.MTU,
	}
	if len(p.Gateway.Name) > unix.IFNAMSIZ-1 {
		t.Fatalf("netnstest: interface name %s too long", p.Gateway.Name)
	}
	p.Gateway.IP4, p.Client.IP4 = netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("10.77.0.2")
	p.Gateway.IP6, p.Client.IP6 = netip.MustParseAddr("fd77::1"), netip.MustParseAddr("fd77::2")
	for _, l := range []Link{p.Gateway, p.Client} {
		ip(t, "netns", "add", l.Namespace)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", l.Namespace).CombinedOutput(); err != nil {
				t.Errorf("netnstest: ip netns del %s: %v: %s", l.Namespace, err, out)
			}
		})
		// Addresses usable at once: no duplicate address detection.
		ip(t, "netns", "exec", l.Namespace, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
		ip(t, "-n", l.Namespace, "link", "set", "lo", "up")
	}
	ip(t, "link", "add", p.Gateway.Name, "netns", p.Gateway.Namespace, "type", "veth", "peer", "name", p.Client.Name, "netns", p.Client.Namespace)
	for _, l := range []Link{p.Gateway, p.Client} {
		if o.MTU > 0 {
			ip(t, "-n", l.Namespace, "link", "set", l.Name, "mtu", fmt.Sprint(o.MTU))
		}
		ip(t, "-n", l.Namespace, "addr", "add", l.IP4.String()+"/24", "brd", p.Broadcast.String(), "dev", l.Name)
		ip(t, "-n", l.Namespace, "addr", "add", l.IP6.String()+"/64", "dev", l.Name, "nodad")
		ip(t, "-n", l.Namespace, "link", "set", l.Name, "up")
		// Multicast goes out on the link (there is no default route).
		ip(t, "-n", l.Namespace, "route", "add", "224.0.0.0/4", "dev", l.Name)
	}
	if p.MTU == 0 {
		p.MTU = 1500
	}
	return p
}

// need skips or fails t when namespaces cannot be made.
func need(t testing.TB) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "not root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "no ip command (iproute2)"
	} else if _, err := exec.LookPath("sysctl"); err != nil {
		why = "no sysctl command (procps)"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("netnstest: network namespaces needed, and %s (CI runs as root with iproute2)", why)
	}
	t.Skipf("netnstest: network namespaces needed, and %s", why)
}

func ip(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("netnstest: ip %v: %v: %s", args, err, bytes.TrimSpace(out))
	}
}

// Do runs fn on a thread of its own in namespace ns and returns its
// error: sockets fn opens stay in ns, whichever goroutine uses them
// later. The thread ends with fn (it is never handed back to the Go
// scheduler in another namespace), and threads the runtime starts
// meanwhile start from a clean template, not from it.
func Do(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- fmt.Errorf("netnstest: %w", err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("netnstest: setns %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// Command returns cmd to run name with args in namespace ns (ip netns
// exec).
func Command(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Index returns the index of interface name in namespace ns.
func Index(t testing.TB, ns, name string) int {
	t.Helper()
	var idx int
	if err := Do(ns, func() error {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return err
		}
		idx = ifi.Index
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return idx
}
