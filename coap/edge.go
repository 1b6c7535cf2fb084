package coap

import (
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/plgd-dev/go-coap/v3/message"

	"github.com/udpgate/udpgate/exchange"
	"github.com/udpgate/udpgate/guard"
	"github.com/udpgate/udpgate/internal/ratelog"
)

// RFC 7252 §4.8 transmission parameters.
const (
	ackRandomFactor  = 1.5
	maxRetransmit    = 4
	exchangeLifetime = 247 * time.Second
	nonLifetime      = 145 * time.Second
)

// Defaults for the zero values of Config.
const (
	DefaultPiggyback = 500 * time.Millisecond
	DefaultBlockSize = 1024
	DefaultMaxBody   = 64 << 10
	DefaultCacheSize = 16384
	// DefaultACKTimeout is RFC 7252's ACK_TIMEOUT.
	DefaultACKTimeout = 2 * time.Second
	// DefaultLeisure is RFC 7252's default Leisure (§8.2.1).
	DefaultLeisure = 5 * time.Second
)

// Config tunes an Edge; zero values take the defaults.
type Config struct {
	// Piggyback is how long a CON request waits for its worker before the
	// gateway acknowledges it and answers later in a separate CON.
	Piggyback time.Duration
	// BlockSize is the largest block of a block-wise response (16..1024).
	BlockSize int
	// MaxBody bounds a request reassembled from Block1 transfers; beyond it
	// the client gets 4.13.
	MaxBody int
	// CacheSize bounds the duplicate-detection cache (exchanges).
	CacheSize int
	// ACKTimeout is RFC 7252's ACK_TIMEOUT for separate responses
	// (DefaultACKTimeout if zero); the first retransmission waits between
	// it and 1.5 times it, each later one twice as long.
	ACKTimeout time.Duration
	// ObserveCONEvery is how often, at least, a notification goes to an
	// observer as a CON rather than a NON: every ObserveCONEvery
	// notifications (DefaultObserveCONEvery if zero; 1 sends every one
	// as a CON), and at least every 24 hours.
	ObserveCONEvery int
	// MaxObservers and MaxObserversPerPeer bound the Observe
	// registrations of the listener and of one client address
	// (DefaultMaxObservers and DefaultMaxObserversPerPeer if zero); a
	// registration beyond gets its response without the Observe option.
	MaxObservers        int
	MaxObserversPerPeer int
	// Registry, if not nil, is told of every Observe registration kept
	// and ended, so that it can keep them beyond the process; nil keeps
	// them in memory only.
	Registry Registry
	// Leisure bounds the random delay before the response to a request
	// sent to a multicast group (or broadcast address) is sent, so that
	// the answers of a group's members do not reach the client at once
	// (RFC 7252 §8.2; DefaultLeisure if zero).
	Leisure time.Duration
	// Restore are registrations that an edge on the same address held
	// before (a restart, a hand-over), read back from the Registry:
	// Start restores their observers.
	Restore []Registration
}

// Edge is the CoAP messaging layer of one listener socket. Set its fields
// and call Start before Receive; Close stops its timers. It is safe for
// concurrent use; calls to Receive are serialised (the read loop makes
// them).
type Edge struct {
	Config
	// Socket is the listener; Conn, SetSource and Local's port are used to
	// answer. Remote, Local and IfIndex are filled per datagram.
	Socket exchange.Exchange
	// Secure says that every datagram comes through a session (a coaps
	// listener's DTLS sessions, ReceiveSession): an answer without one,
	// such as a notification to an observer restored from another
	// process, is dropped and counted as a send error, never sent in
	// plaintext.
	Secure bool
	Log    *slog.Logger
	// dropped logs the responses the amplification limit dropped.
	dropped *ratelog.Logger
	// Guard, if not nil, is the listener's guard: a response to a source
	// it limits is cut to what the amplification limit allows (a smaller
	// Block2 block, or 4.01 with an Echo option), and an Echo option or an
	// acknowledged separate response validates the source.
	Guard *guard.Guard
	// Retransmitted, if not nil, is called by Receive, on the read loop,
	// for a retransmission of a CON request that its owner has started
	// (Started) and that is not answered yet: with direct delivery the
	// owner publishes it again, so that a worker that died with it costs
	// the client one retransmission. It must not block.
	Retransmitted func(r *Request)

	// rx serialises Receive, which runs on the listener's read loop; it
	// guards opts, the options of the datagram being decoded.
	rx   sync.Mutex
	opts [maxOptions]message.Option

	mu     sync.Mutex // guards everything below
	dedupe map[peerMID]*cached
	// recent holds the dedupe cache's entries in the order they came: a
	// ring of CacheSize entries, from recentHead (the oldest), allocated
	// in chunks as it fills, so that an entry never moves.
	recent     [][]cached
	recentHead int
	recentLen  int
	recentSeq  uint64 // entries remembered so far
	uploads    map[transferKey]*upload
	downloads  map[transferKey]*download
	outgoing   map[peerMID]*retransmission
	later      map[*time.Timer]struct{} // responses to multicast requests waiting for their moment (sendLater)
	peers      map[netip.AddrPort]*midState
	obs        observeState
	closed     bool
	// The piggyback windows of CON requests, in the order they opened,
	// which is the order they end: a ring of windows, numbered from
	// winHead (the oldest) to winTail (exclusive), and one timer for the
	// oldest (see ackDue).
	windows  []window // length a power of two
	winHead  uint64
	winTail  uint64
	winTimer *time.Timer
	winArmed bool      // winTimer is set for the oldest window
	epoch    time.Time // windows' ends are durations since epoch (monotonic)

	stats counters
}

// peerMID names a message by its peer and message id.
type peerMID struct {
	peer netip.AddrPort
	mid  uint16
}

// Stats are cumulative counts of one CoAP listener's messaging layer.
type Stats struct {
	Requests        uint64 // requests returned for publishing
	Duplicates      uint64 // duplicates answered from the cache (or ignored while pending)
	Pings           uint64 // empty CONs answered with RST
	Malformed       uint64 // datagrams that did not parse (a CON among them got RST)
	BadOption       uint64 // 4.02 sent
	Rejected        uint64 // other gateway-made errors: 4.00, 4.05, 4.08, 4.13, 5.05
	BlockContinue   uint64 // 2.31 Continue sent for Block1
	BlocksServed    uint64 // Block2 blocks served from the gateway's copy
	Piggybacked     uint64 // responses sent in the ACK
	Separate        uint64 // responses sent as separate CON
	Retransmissions uint64 // separate responses sent again
	GaveUp          uint64 // separate responses never acknowledged
	Resets          uint64 // RSTs received for separate responses
	Timeouts        uint64 // 5.04 sent
	Unavailable     uint64 // 5.03 sent
	NotFound        uint64 // 4.04 sent by the gateway: no group serves the resource
	Evicted         uint64 // cache entries dropped to stay within CacheSize
	SendErrors      uint64
	TooManyRequests uint64 // 4.29 sent to trusted or validated sources over their rate
	EchoChallenges  uint64 // 4.01 with an Echo option sent: the response did not fit the amplification limit
	// Retransmitted counts retransmissions of CON requests still
	// unanswered, handed to Retransmitted to be published again.
	Retransmitted uint64
	// MulticastSuppressed counts error responses (4.xx, 5.xx, the
	// gateway's and the workers') not sent to requests that came to a
	// multicast group or broadcast address (ReceiveGroup).
	MulticastSuppressed uint64
	// Observe counts registrations and notifications.
	Observe ObserveStats
}

// counters are the edge's Stats as they are counted.
type counters struct {
	requests, duplicates, pings, malformed, badOption, rejected, blockContinue, blocksServed atomic.Uint64
	piggybacked, separate, retransmissions, gaveUp, resets, timeouts, unavailable, evicted   atomic.Uint64
	sendErrors, tooMany, echoChallenges, retransmitted, notFound                             atomic.Uint64
	multicastSuppressed                                                                      atomic.Uint64
	// Observe: registrations now, kept, ended by reason; notifications.
	observers                           atomic.Int64
	registrations, notifyNON, notifyCON atomic.Uint64
	restored                            atomic.Uint64
	ends                                [numEnds]atomic.Uint64
}

// Stats returns a snapshot of the edge's counters.
func (e *Edge) Stats() Stats {
	c := &e.stats
	return Stats{
		Requests: c.requests.Load(), Duplicates: c.duplicates.Load(), Pings: c.pings.Load(),
		Malformed: c.malformed.Load(), BadOption: c.badOption.Load(), Rejected: c.rejected.Load(),
		BlockContinue: c.blockContinue.Load(), BlocksServed: c.blocksServed.Load(), Piggybacked: c.piggybacked.Load(),
		Separate: c.separate.Load(), Retransmissions: c.retransmissions.Load(), GaveUp: c.gaveUp.Load(),
		Resets: c.resets.Load(), Timeouts: c.timeouts.Load(), Unavailable: c.unavailable.Load(), NotFound: c.notFound.Load(),
		Evicted: c.evicted.Load(), SendErrors: c.sendErrors.Load(),
		TooManyRequests: c.tooMany.Load(), EchoChallenges: c.echoChallenges.Load(),
		Retransmitted: c.retransmitted.Load(), MulticastSuppressed: c.multicastSuppressed.Load(),
		Observe: e.observeStats(),
	}
}

// Start sets defaults and allocates the edge's state.
func (e *Edge) Start() {
	if e.Piggyback <= 0 {
		e.Piggyback = DefaultPiggyback
	}
	if e.BlockSize <= 0 || e.BlockSize > 1024 {
		e.BlockSize = DefaultBlockSize
	}
	if e.MaxBody <= 0 {
		e.MaxBody = DefaultMaxBody
	}
	if e.CacheSize <= 0 {
		e.CacheSize = DefaultCacheSize
	}
	if e.ACKTimeout <= 0 {
		e.ACKTimeout = DefaultACKTimeout
	}
	if e.Leisure <= 0 {
		e.Leisure = DefaultLeisure
	}
	if e.ObserveCONEvery <= 0 {
		e.ObserveCONEvery = DefaultObserveCONEvery
	}
	if e.MaxObservers <= 0 {
		e.MaxObservers = DefaultMaxObservers
	}
	if e.MaxObserversPerPeer <= 0 {
		e.MaxObserversPerPeer = DefaultMaxObserversPerPeer
	}
	if e.Log == nil {
		e.Log = slog.New(slog.DiscardHandler)
	}
	e.dropped = &ratelog.Logger{Log: e.Log, Level: slog.LevelWarn,
		Msg: "coap: responses dropped by the amplification limit (UDPGATE_AMPLIFICATION; UDPGATE_TRUST exempts sources)"}
	e.dedupe = make(map[peerMID]*cached)
	e.uploads = make(map[transferKey]*upload)
	e.downloads = make(map[transferKey]*download)
	e.outgoing = make(map[peerMID]*retransmission)
	e.later = make(map[*time.Timer]struct{})
	e.peers = make(map[netip.AddrPort]*midState)
	e.obs = observeState{
		observers:  make(map[obsKey]*observer),
		byResource: make(map[string]map[*observer]struct{}),
		byPeer:     make(map[netip.AddrPort][]*observer),
	}
	e.epoch = time.Now()
	e.winTimer = time.AfterFunc(time.Hour, e.ackDue)
	e.winTimer.Stop()
	if len(e.Restore) > 0 {
		e.restore(e.Restore, e.epoch)
		e.Restore = nil
	}
}

// Close stops retransmissions and pending timers. Receive and Reply after
// Close send nothing.
func (e *Edge) Close() {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closed = true
	for k, r := range e.outgoing {
		r.timer.Stop()
		delete(e.outgoing, k)
	}
	for t := range e.later {
		t.Stop()
		delete(e.later, t)
	}
	if e.winTimer != nil {
		e.winTimer.Stop()
	}
	clear(e.windows)
	e.winHead = e.winTail
}

// Sweep drops expired cache entries, transfers and message-id state. The
// edge's owner calls it every few seconds.
func (e *Edge) Sweep(now time.Time) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for e.recentLen > 0 && !now.Before(e.slot(e.recentHead).expires) {
		e.forgetOldest()
	}
	for k, u := range e.uploads {
		if now.After(u.expires) {
			delete(e.uploads, k)
		}
	}
	for k, d := range e.downloads {
		if now.After(d.expires) {
			delete(e.downloads, k)
		}
	}
	for p, m := range e.peers {
		if now.Sub(m.lastUsed) > exchangeLifetime {
			delete(e.peers, p)
		}
	}
}

// sendLater sends b, the response to a request sent to a multicast
// group, to dst after a random delay within Leisure (RFC 7252 §8.2). At
// most CacheSize responses wait at once; one more is dropped, counted as
// a send error. Close cancels those still waiting. b is kept until sent.
func (e *Edge) sendLater(dst exchange.Exchange, b []byte) {
	delay := time.Duration(rand.Int64N(int64(e.Leisure)))
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || len(e.later) >= e.CacheSize {
		e.stats.sendErrors.Add(1)
		return
	}
	var t *time.Timer
	t = time.AfterFunc(delay, func() {
		e.mu.Lock() // after sendLater's assignment of t
		_, due := e.later[t]
		delete(e.later, t)
		e.mu.Unlock()
		if due {
			e.send(dst, b)
		}
	})
	e.later[t] = struct{}{}
}

// send writes b to dst, counting and logging at Debug a failure. It does
// not keep b.
func (e *Edge) send(dst exchange.Exchange, b []byte) {
	if e.Secure && dst.Session == nil {
		e.stats.sendErrors.Add(1)
		return
	}
	if err := dst.Write(b); err != nil {
		e.stats.sendErrors.Add(1)
		e.Log.Debug("coap: send", "err", err)
	}
}
