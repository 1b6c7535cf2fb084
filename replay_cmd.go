package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
)

// runReplay is `udpgate replay`.
func runReplay(ctx context.Context, cfg config, log *slog.Logger, args []string, stdout, stderr io.Writer) error {
	return errors.New("replay: not implemented yet")
}
