package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"

	"github.com/udpgate/udpgate/handover"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/ws"
)

// Inherited are the sockets a gateway took over from the process it
// replaces, by name: listeners by their UDPGATE_LISTENERS form (a ws
// listener's TCP socket too), the HTTP listener as "http". A nil
// *Inherited holds none.
type Inherited struct {
	mu    sync.Mutex // guards conns, ws and http: the listener file takes its sockets from another goroutine
	conns map[string]*net.UDPConn
	ws    map[string]net.Listener // ws listeners' TCP sockets
	http  net.Listener
}

// UDP returns the socket handed over for l, if any, and forgets it: the
// listener file's listeners take theirs with it.
func (inh *Inherited) UDP(l config.Listener) *net.UDPConn {
	if inh == nil {
		return nil
	}
	inh.mu.Lock()
	defer inh.mu.Unlock()
	c := inh.conns[l.String()]
	delete(inh.conns, l.String())
	return c
}

func (inh *Inherited) udp(l config.Listener) *net.UDPConn { return inh.UDP(l) }

// tcp returns the TCP socket handed over for the ws listener l, if any,
// and forgets it.
func (inh *Inherited) tcp(l config.Listener) net.Listener {
	if inh == nil {
		return nil
	}
	inh.mu.Lock()
	defer inh.mu.Unlock()
	ln := inh.ws[l.String()]
	delete(inh.ws, l.String())
	return ln
}

// httpListener returns the HTTP listener handed over, if any.
func (inh *Inherited) httpListener() net.Listener {
	if inh == nil {
		return nil
	}
	inh.mu.Lock()
	defer inh.mu.Unlock()
	ln := inh.http
	inh.http = nil
	return ln
}

// CloseUnused closes the sockets handed over that this process's
// configuration does not serve: the old process answers on them until it
// has drained.
func (inh *Inherited) CloseUnused() {
	if inh == nil {
		return
	}
	inh.mu.Lock()
	defer inh.mu.Unlock()
	for name, c := range inh.conns {
		c.Close()
		delete(inh.conns, name)
	}
	for name, ln := range inh.ws {
		ln.Close()
		delete(inh.ws, name)
	}
	if inh.http != nil {
		inh.http.Close()
		inh.http = nil
	}
}

// isWebSocket reports whether the socket name is a ws listener's:
// ADDR:PORT/ws or ADDR:PORT/wss.
func isWebSocket(name string) bool {
	return strings.HasSuffix(name, "/"+schemas.ProtocolWS) || strings.HasSuffix(name, "/"+config.ProtocolWSS)
}

// httpSocket names the HTTP listener in a hand-over.
const httpSocket = "http"

// TakeOver takes the sockets of the gateway offering them on
// cfg.Handover, if one does; nil, nil if none does (or the setting is
// empty).
func TakeOver(ctx context.Context, cfg config.Config, log *slog.Logger) (*Inherited, *handover.Taken, error) {
	if cfg.Handover == "" {
		return nil, nil, nil
	}
	taken, err := handover.Take(ctx, cfg.Handover)
	if errors.Is(err, handover.ErrNoOffer) {
		log.Debug("gateway: no running gateway offers its sockets", "path", cfg.Handover)
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("%w (UDPGATE_HANDOVER)", err)
	}
	inh := &Inherited{conns: map[string]*net.UDPConn{}, ws: map[string]net.Listener{}}
	for _, s := range taken.Sockets {
		var err error
		switch {
		case s.Name == httpSocket:
			inh.http, err = net.FileListener(s.File)
		case isWebSocket(s.Name):
			var ln net.Listener
			if ln, err = net.FileListener(s.File); err == nil {
				inh.ws[s.Name] = ln
			}
		default:
			var pc net.PacketConn
			if pc, err = net.FilePacketConn(s.File); err == nil {
				c, ok := pc.(*net.UDPConn)
				if !ok {
					pc.Close()
					err = fmt.Errorf("%s is not a UDP socket", s.Name)
				}
				inh.conns[s.Name] = c
			}
		}
		s.File.Close()
		if err != nil {
			inh.CloseUnused()
			return nil, nil, fmt.Errorf("handover: socket %s: %w", s.Name, err)
		}
	}
	return inh, taken, nil
}

// OfferSockets offers the gateway's sockets on cfg.Handover until a new
// process takes them; then it stops this one gracefully (it drains: a ws
// listener stops accepting at once, so that the new process takes every
// new connection, and closes its connections with 1001 once its calls
// are answered). The gateway serves cfg.Listeners, named by their
// UDPGATE_LISTENERS form (a ws listener's TCP socket too), then the
// listeners added while it serves (the listener file's), named
// ADDR:PORT/PROTOCOL by their bound address (ws or wss for a ws
// listener); leased listeners end with the process that holds them and
// are not offered.
func OfferSockets(run *Running, cfg config.Config, log *slog.Logger) error {
	sockets := func() ([]handover.Socket, error) {
		var out []handover.Socket
		fail := func(err error) ([]handover.Socket, error) {
			for _, s := range out {
				s.File.Close()
			}
			return nil, err
		}
		// Gateway.Listeners and Gateway.WebSockets are cfg.Listeners's
		// UDP and ws listeners, each in their order.
		initial := map[*net.UDPConn]string{}
		initialWS := map[*ws.Server]string{}
		udp, tcp := run.Gateway.Listeners, run.Gateway.WebSockets
		for _, l := range cfg.Listeners {
			if l.Protocol == schemas.ProtocolWS && len(tcp) > 0 {
				initialWS[tcp[0]] = l.String()
				tcp = tcp[1:]
			} else if l.Protocol != schemas.ProtocolWS && len(udp) > 0 {
				initial[udp[0].Conn] = l.String()
				udp = udp[1:]
			}
		}
		for _, l := range run.Gateway.Live() {
			name, ok := initial[l.Conn]
			if !ok && strings.HasPrefix(l.Origin, "lease") {
				continue
			}
			if !ok {
				addr := l.Conn.LocalAddr().(*net.UDPAddr).AddrPort()
				name = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port()).String() + "/" + l.Protocol
			}
			f, err := l.Conn.File()
			if err != nil {
				return fail(err)
			}
			out = append(out, handover.Socket{Name: name, File: f})
		}
		for _, srv := range run.Gateway.WebSocketsLive() {
			name, ok := initialWS[srv]
			if !ok {
				proto := schemas.ProtocolWS
				if srv.Certificates != nil {
					proto = config.ProtocolWSS
				}
				addr := srv.Listener.Addr().(*net.TCPAddr).AddrPort()
				name = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port()).String() + "/" + proto
			}
			fl, ok := srv.Listener.(interface{ File() (*os.File, error) })
			if !ok {
				return fail(fmt.Errorf("listener %s: no descriptor to hand over", name))
			}
			f, err := fl.File()
			if err != nil {
				return fail(fmt.Errorf("listener %s: %w", name, err))
			}
			out = append(out, handover.Socket{Name: name, File: f})
		}
		if tl, ok := run.HTTP.(*net.TCPListener); ok {
			f, err := tl.File()
			if err != nil {
				return fail(err)
			}
			out = append(out, handover.Socket{Name: httpSocket, File: f})
		}
		return out, nil
	}
	err := handover.Offer(run.ctx, cfg.Handover, sockets, func() {
		log.Info("gateway: a new process took the sockets over: stopping", "path", cfg.Handover)
		run.cancel()
	})
	if err != nil {
		// Serving goes on; only the next hand-over is not possible.
		log.Error("gateway: cannot offer the sockets for a hand-over", "err", err)
	}
	return nil
}
