package ingress

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/udpgate/udpgate/schemas"
)

// StreamConfig is a stream the gateway makes sure of: the capture stream
// ingress publishes to, or the stream that records replies.
type StreamConfig struct {
	Name        string // schemas.StreamIn by default
	Description string // for operators; the capture's by default
	Subject     string // the subjects published to: schemas.CaptureWildcard(prefix)
	// Stores, if not empty, is what the stream stores Subject's messages
	// as, by a subject transform: schemas.InWildcard(prefix) for the
	// capture, whose copies are published to PREFIX.capture.… and stored
	// under their request subjects, PREFIX.in.….
	Stores   string
	MaxAge   time.Duration // 0: unlimited
	MaxBytes int64         // 0 or negative: unlimited
	Replicas int           // 1 if 0
	Memory   bool          // memory storage instead of file storage
	// Async creates the stream in JetStream's asynchronous persist mode:
	// file storage writes messages in batches after acknowledging them,
	// rather than each before its acknowledgement. A server that dies
	// may lose the last few milliseconds of acknowledged messages.
	Async bool
	// Duplicates is the window in which JetStream drops a repeated
	// Nats-Msg-Id (DefaultDuplicates if zero).
	Duplicates time.Duration
}

// DefaultDuplicates is the duplicate window of a stream that ingress
// creates. It covers a CoAP client's retransmissions (MAX_TRANSMIT_SPAN,
// 45 s) and stays below EXCHANGE_LIFETIME (247 s), after which a client may
// reuse a message id for a new request.
const DefaultDuplicates = 2 * time.Minute

// createdStream starts what EnsureStream returns when it created the
// stream.
const createdStream = "created stream "

// Created reports whether did, returned by EnsureStream, says that it
// created the stream (rather than found it).
func Created(did string) bool { return strings.HasPrefix(did, createdStream) }

// EnsureStream creates the capture stream if it does not exist. A stream
// that exists is used as it is and never updated; if it cannot serve as the
// capture (its subjects do not cover c.Subject, or its retention would
// delete messages once one worker group has them), EnsureStream returns an
// error that says what differs. It returns what it did, for the log.
func EnsureStream(ctx context.Context, js jetstream.JetStream, c StreamConfig) (string, error) {
	s, err := js.Stream(ctx, c.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		if c.Duplicates == 0 {
			c.Duplicates = DefaultDuplicates
		}
		maxBytes := c.MaxBytes
		if maxBytes <= 0 {
			maxBytes = -1
		}
		if c.Description == "" {
			c.Description = "udpgate capture: every request datagram"
		}
		var transform *jetstream.SubjectTransformConfig
		if c.Stores != "" {
			transform = &jetstream.SubjectTransformConfig{Source: c.Subject, Destination: c.Stores}
		}
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name:             c.Name,
			Description:      c.Description,
			Subjects:         []string{c.Subject},
			Retention:        jetstream.LimitsPolicy,
			Storage:          storage(c.Memory),
			MaxAge:           c.MaxAge,
			MaxBytes:         maxBytes,
			Replicas:         max(c.Replicas, 1),
			Duplicates:       c.Duplicates,
			Discard:          jetstream.DiscardOld,
			PersistMode:      persistMode(c.Async),
			SubjectTransform: transform,
		})
		if err != nil {
			return "", fmt.Errorf("ingress: create stream %s on %s: %w", c.Name, c.Subject, err)
		}
		return createdStream + c.Name, nil
	}
	if err != nil {
		return "", fmt.Errorf("ingress: look up stream %s: %w", c.Name, err)
	}
	info := s.CachedInfo()
	if err := checkStream(info.Config, c); err != nil {
		return "", err
	}
	did := "using existing stream " + c.Name + " as it is"
	if haveAsync := info.Config.PersistMode == jetstream.AsyncPersistMode; haveAsync != c.Async && info.Config.Storage == jetstream.FileStorage {
		did += fmt.Sprintf(" (it persists %s, not %s as asked: an existing stream keeps its mode)", persistName(haveAsync), persistName(c.Async))
	}
	return did, nil
}

func persistMode(async bool) jetstream.PersistModeType {
	if async {
		return jetstream.AsyncPersistMode
	}
	return jetstream.DefaultPersistMode
}

// persistName names a persist mode as UDPGATE_STREAM_PERSIST does.
func persistName(async bool) string {
	if async {
		return "async"
	}
	return "sync"
}

// checkStream reports why an existing stream cannot serve as the capture.
func checkStream(have jetstream.StreamConfig, want StreamConfig) error {
	var problems []string
	if !slices.ContainsFunc(have.Subjects, func(s string) bool { return schemas.Covers(s, want.Subject) }) {
		problems = append(problems, fmt.Sprintf("its subjects %q do not cover %q", have.Subjects, want.Subject))
	}
	if want.Stores != "" {
		tr := have.SubjectTransform
		switch {
		case tr == nil:
			problems = append(problems, fmt.Sprintf("it has no subject transform from %q to %q (a stream made for udpgate's wire contract 1 stores requests as published; version %d publishes capture copies to %q)",
				want.Subject, want.Stores, schemas.Version, want.Subject))
		case tr.Source != want.Subject || tr.Destination != want.Stores:
			problems = append(problems, fmt.Sprintf("its subject transform maps %q to %q, not %q to %q", tr.Source, tr.Destination, want.Subject, want.Stores))
		}
		if i := slices.IndexFunc(have.Subjects, func(s string) bool { return schemas.Overlap(s, want.Stores) }); i >= 0 {
			problems = append(problems, fmt.Sprintf("its subject %q overlaps %q, where requests go to direct groups as core NATS messages: it would capture them twice", have.Subjects[i], want.Stores))
		}
	}
	if have.Retention != jetstream.LimitsPolicy {
		problems = append(problems, fmt.Sprintf("its retention is %s, not limits (the capture must keep what workers acknowledge)", have.Retention))
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("ingress: stream %s exists but %s; udpgate never changes an existing stream: fix it, or configure another name (UDPGATE_STREAM, UDPGATE_REPLIES_STREAM)",
		have.Name, strings.Join(problems, ", and "))
}

func storage(memory bool) jetstream.StorageType {
	if memory {
		return jetstream.MemoryStorage
	}
	return jetstream.FileStorage
}
