package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"
	"github.com/plgd-dev/go-coap/v3/message/codes"
	"github.com/plgd-dev/go-coap/v3/net/blockwise"
	"github.com/plgd-dev/go-coap/v3/options"
	coapudp "github.com/plgd-dev/go-coap/v3/udp"
	coapclient "github.com/plgd-dev/go-coap/v3/udp/client"

	"github.com/udpgate/udpgate/coap"
)

// coapMethod returns the code of the request method Options.Method names,
// in any case; GET if it names none.
func coapMethod(name string) (uint8, error) {
	if name == "" {
		return uint8(codes.GET), nil
	}
	c, ok := coap.ParseMethod(name)
	if !ok {
		return 0, fmt.Errorf("unknown CoAP method %q (want get, post, put, delete, fetch, patch or ipatch)", name)
	}
	return uint8(c), nil
}

// CodeString formats a CoAP code as RFC 7252 writes it, with go-coap's
// name: "2.05 Content", "4.04 NotFound".
func CodeString(code uint8) string {
	return fmt.Sprintf("%d.%02d %v", code>>5, code&31, codes.Code(code))
}

// dialCoAP runs go-coap's client on the connected socket: it matches
// responses to requests by token and message id, acknowledges separate
// responses, retransmits confirmable requests (first after about
// Options.Wait, then doubling) and transfers large bodies block-wise
// (Block1 and Block2, 1024-byte blocks).
func dialCoAP(conn *net.UDPConn, opts Options) *coapclient.Conn {
	return coapudp.Client(conn, coapOptions(opts)...)
}

// coapOptions are the options of go-coap's client for opts.
func coapOptions(opts Options) []coapudp.Option {
	// As many retransmissions as fit in the give-up time; the request's
	// context ends the exchange at that time in any case.
	var retransmit uint32
	for sum, w := opts.wait(), opts.wait(); sum < opts.timeout() && retransmit < 20; retransmit++ {
		w *= 2
		sum += w
	}
	return []coapudp.Option{
		options.WithBlockwise(true, blockwise.SZX1024, opts.timeout()),
		options.WithTransmission(1, opts.wait(), retransmit+1),
		options.WithCloseSocket(),
	}
}

// doCoAP sends one confirmable request and waits for its response.
func (c *Conn) doCoAP(ctx context.Context, payload []byte) (Result, error) {
	res := Result{ContentFormat: -1}
	ctx, cancel := context.WithTimeout(ctx, c.opts.timeout())
	defer cancel()
	req := c.coap.AcquireMessage(ctx)
	defer c.coap.ReleaseMessage(req)
	token, err := c.coap.GetToken()
	if err != nil {
		return res, fmt.Errorf("client: coap token: %w", err)
	}
	req.SetToken(token)
	req.SetCode(codes.Code(c.coapCode))
	req.SetType(message.Confirmable)
	if err := req.SetPath(c.path); err != nil {
		return res, fmt.Errorf("client: coap path %q: %w", c.path, err)
	}
	for _, q := range c.queries {
		req.AddQuery(q)
	}
	if c.opts.ContentFormat != nil {
		req.SetContentFormat(message.MediaType(*c.opts.ContentFormat))
	}
	if len(payload) > 0 {
		req.SetBody(bytes.NewReader(payload))
	}
	start := time.Now()
	resp, err := c.coap.Do(req)
	if err != nil {
		if ctx.Err() == context.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded) {
			return res, fmt.Errorf("client: %w from %s within %s", ErrNoReply, c.remote, c.opts.timeout())
		}
		return res, c.ioError(err)
	}
	defer c.coap.ReleaseMessage(resp)
	res.Latency = time.Since(start)
	res.From = c.remote
	res.Code = uint8(resp.Code())
	if cf, err := resp.ContentFormat(); err == nil {
		res.ContentFormat = int(cf)
	}
	if resp.Body() != nil {
		if res.Body, err = resp.ReadBody(); err != nil {
			return res, fmt.Errorf("client: coap response body: %w", err)
		}
	}
	return res, nil
}
