package client

import (
	"context"
	"fmt"
	"net"

	pion "github.com/pion/dtls/v3"
	dtlsnet "github.com/pion/dtls/v3/pkg/net"
	coapdtls "github.com/plgd-dev/go-coap/v3/dtls"
	coapclient "github.com/plgd-dev/go-coap/v3/udp/client"
)

// dialCoAPS shakes hands (handshakeDTLS) and runs go-coap's client in the
// session (coaps://).
func dialCoAPS(ctx context.Context, conn *net.UDPConn, opts Options) (*coapclient.Conn, error) {
	dc, err := handshakeDTLS(ctx, conn, opts)
	if err != nil {
		return nil, err
	}
	return coapdtls.Client(dc, coapOptions(opts)...), nil
}

// handshakeDTLS shakes hands over DTLS 1.2 with the pre-shared key of
// opts on the connected socket, within the give-up time.
func handshakeDTLS(ctx context.Context, conn *net.UDPConn, opts Options) (*pion.Conn, error) {
	key := opts.PSK
	dc, err := pion.ClientWithOptions(dtlsnet.PacketConnFromConn(conn), conn.RemoteAddr(),
		pion.WithPSK(func([]byte) ([]byte, error) { return key, nil }),
		pion.WithPSKIdentityHint([]byte(opts.PSKIdentity)),
		pion.WithCipherSuites(pion.TLS_PSK_WITH_AES_128_CCM_8, pion.TLS_PSK_WITH_AES_128_GCM_SHA256),
		pion.WithConnectionIDGenerator(pion.OnlySendCIDGenerator()))
	if err != nil {
		return nil, invalid{fmt.Errorf("dtls: %w", err)}
	}
	ctx, cancel := context.WithTimeout(ctx, opts.timeout())
	defer cancel()
	if err := dc.HandshakeContext(ctx); err != nil {
		dc.Close()
		return nil, fmt.Errorf("dtls handshake: %w", err)
	}
	return dc, nil
}
