// Package pcap brings packet captures into udpgate's capture stream and
// writes the capture stream out as a packet capture.
//
// Importer reads pcap and pcapng files (gopacket's pure-Go pcapgo reader, no
// libpcap), keeps the UDP datagrams over IPv4 and IPv6 sent to the ports it
// is told about, decodes each with its listener's protocol exactly as the
// gateway's ingress does (the CoAP and RPC edges of packages coap and rpc),
// and publishes each request as the gateway publishes its capture copy
// (ingress.Message, to PREFIX.capture.…, which the capture stream stores
// as PREFIX.in.…), with the wire contract's headers (schemas/README.md) and
// the packet's addresses, so that it replays and exports like live
// traffic. Unlike a live request it carries ce-time, the packet's time, and
// is never published to direct worker groups.
//
// Exporter reads a time window of the capture stream (and optionally the
// recorded replies) with ordered ephemeral consumers and writes each
// datagram, rebuilt byte for byte, as an Ethernet/IP/UDP frame of a pcap file
// that Wireshark and tshark open. A request's time is its ce-time if it has
// one (an imported request), else when the capture stream stored it. A CoAP
// request is its datagram head (udpgate-datagram-head) and its body; one
// reassembled from a Block1 upload has no head and is written as a single
// CON request encoded from its request line, Content-Format and Accept, with
// message id 0, an empty token and the whole body (its reply likewise).
// What a ws listener received (ce-source udpgate://NODE/PORT/ws: WebSocket
// calls and connection events) was never a datagram: it is counted and
// left out, and so are the replies to it.
package pcap

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// Reader reads the frames of a pcap or pcapng file, whichever it is. It is
// not safe for concurrent use.
type Reader struct {
	pcap *pcapgo.Reader
	ng   *pcapgo.NgReader
}

// pcapngMagic starts a pcapng file (its Section Header Block type).
var pcapngMagic = []byte{0x0a, 0x0d, 0x0d, 0x0a}

// NewReader reads the file header from r and returns a reader of its
// frames. It tells pcap from pcapng by the first four bytes.
func NewReader(r io.Reader) (*Reader, error) {
	br := bufio.NewReaderSize(r, 1<<16)
	magic, err := br.Peek(4)
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("pcap: read file header: %w", err)
	}
	if bytes.Equal(magic, pcapngMagic) {
		ng, err := pcapgo.NewNgReader(br, pcapgo.NgReaderOptions{})
		if err != nil {
			return nil, fmt.Errorf("pcap: pcapng: %w", err)
		}
		return &Reader{ng: ng}, nil
	}
	p, err := pcapgo.NewReader(br)
	if err != nil {
		return nil, fmt.Errorf("pcap: %w", err)
	}
	return &Reader{pcap: p}, nil
}

// Next returns the next frame, its capture information and its link type,
// or io.EOF after the last. The frame is valid until the next call.
func (r *Reader) Next() ([]byte, gopacket.CaptureInfo, layers.LinkType, error) {
	if r.pcap != nil {
		data, ci, err := r.pcap.ZeroCopyReadPacketData()
		return data, ci, r.pcap.LinkType(), err
	}
	data, ci, err := r.ng.ZeroCopyReadPacketData()
	if err != nil {
		return nil, ci, 0, err
	}
	// Not cached: a new section of the file brings its own interfaces.
	iface, err := r.ng.Interface(ci.InterfaceIndex)
	if err != nil {
		return nil, ci, 0, fmt.Errorf("pcap: pcapng interface %d: %w", ci.InterfaceIndex, err)
	}
	return data, ci, iface.LinkType, nil
}
