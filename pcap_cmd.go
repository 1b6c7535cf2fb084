package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
)

// runPcap is `udpgate pcap import|export`.
func runPcap(ctx context.Context, cfg config, log *slog.Logger, args []string, stdout, stderr io.Writer) error {
	return errors.New("pcap: not implemented yet")
}
