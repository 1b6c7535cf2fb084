package config

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/udpgate/udpgate/schemas"
)

// Group is a multicast group a raw or coap listener joins (option
// group=): the listener reads the datagrams sent to it as its own, and
// answers them from its unicast address.
type Group struct {
	Addr netip.Addr
	// Interface is the name of the interface to join on; "" lets
	// routing pick it (the interface of the route to the group).
	Interface string
}

func (g Group) String() string {
	if g.Interface == "" {
		return g.Addr.String()
	}
	return g.Addr.String() + "%" + g.Interface
}

// parseGroups parses the value of a group= option: multicast addresses,
// each with an optional %INTERFACE, separated by spaces (224.0.1.187%eth0
// ff02::fd%eth0).
func parseGroups(value string) ([]Group, error) {
	var gs []Group
	for _, f := range strings.Fields(value) {
		a, iface, _ := strings.Cut(f, "%")
		addr, err := netip.ParseAddr(a)
		if err != nil || !addr.IsMulticast() {
			return nil, fmt.Errorf("%q is not a multicast address, with an optional %%INTERFACE (like 224.0.1.187%%eth0 or ff02::fd%%eth0)", f)
		}
		if strings.ContainsAny(iface, "%/ ") || len(iface) > 15 {
			return nil, fmt.Errorf("%q: %q is not an interface name", f, iface)
		}
		if addr.Is6() && iface == "" && (addr.IsLinkLocalMulticast() || addr.IsInterfaceLocalMulticast()) {
			return nil, fmt.Errorf("%q: a link-local group needs its interface (like %s%%eth0)", f, addr)
		}
		gs = append(gs, Group{Addr: addr, Interface: iface})
	}
	if len(gs) == 0 {
		return nil, errors.New("no group given")
	}
	return gs, nil
}

// listenerGroups returns the groups of checked listener options opts for
// a listener on addr with protocol proto, and an error when they do not
// fit the listener: groups are for raw and coap listeners bound to the
// wildcard address of the groups' family.
func listenerGroups(opts string, addr netip.Addr, proto string) ([]Group, error) {
	var gs []Group
	for _, kv := range strings.Split(opts, ";") {
		if key, value, _ := strings.Cut(kv, "="); strings.TrimSpace(key) == "group" {
			gs, _ = parseGroups(value) // checked by checkListenerOptions
		}
	}
	if gs == nil {
		return nil, nil
	}
	if proto != schemas.ProtocolRaw && proto != schemas.ProtocolCoAP {
		return nil, errors.New("group= is for raw and coap listeners")
	}
	if !addr.IsUnspecified() {
		return nil, fmt.Errorf("group= needs the listener bound to the wildcard address (0.0.0.0 or [::]), not %s: a socket bound to one address reads no group's datagrams", addr)
	}
	for _, g := range gs {
		if g.Addr.Is4() != addr.Is4() {
			return nil, fmt.Errorf("group %s is not of the listener's address family (%s): write the listener [::]:PORT for IPv6 groups, PORT for IPv4 ones", g, addr)
		}
	}
	return gs, nil
}

// Groups returns the multicast groups the listener joins (option group=,
// raw and coap listeners on a wildcard address), nil for none. A
// listener stays comparable: its groups are read from its checked
// options.
func (l Listener) Groups() []Group {
	gs, _ := listenerGroups(l.Options, l.Addr.Addr(), l.Protocol)
	return gs
}

// dfOn reports whether checked listener options say df=on.
func dfOn(opts string) bool {
	for _, kv := range strings.Split(opts, ";") {
		key, value, _ := strings.Cut(kv, "=")
		if strings.TrimSpace(key) == "df" && strings.TrimSpace(value) == "on" {
			return true
		}
	}
	return false
}
