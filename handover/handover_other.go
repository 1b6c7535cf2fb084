//go:build !unix

package handover

import (
	"context"
	"errors"
	"os"
)

// Version is the protocol's version.
const Version = 1

// Socket is one socket handed over.
type Socket struct {
	Name string
	File *os.File
}

// ErrNoOffer is returned by Take when no process offers sockets.
var ErrNoOffer = errors.New("handover: no process offers sockets")

var errUnsupported = errors.New("handover: passing sockets needs a Unix system")

// Offer is not supported here.
func Offer(ctx context.Context, path string, sockets func() ([]Socket, error), handedOver func()) error {
	return errUnsupported
}

// Taken are the sockets a new process took over.
type Taken struct{ Sockets []Socket }

// Take is not supported here: it finds no offer.
func Take(ctx context.Context, path string) (*Taken, error) { return nil, ErrNoOffer }

// Ready is not supported here.
func (t *Taken) Ready(ctx context.Context) error { return errUnsupported }
