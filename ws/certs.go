package ws

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultCheckEvery is how often, at most, Certificates looks at its
// files for a change.
const DefaultCheckEvery = time.Second

// Certificates serves a wss listener's certificate chain and key from two
// PEM files, and loads them again when either changes (a renewal by
// certbot or cert-manager, for instance): a handshake looks at the files'
// modification times and sizes at most every CheckEvery, and a pair that
// does not load (a renewal half written) keeps the previous one in use,
// counted and logged, until a later look loads it. Make it with
// LoadCertificates; it is safe for concurrent use.
type Certificates struct {
	CertFile, KeyFile string
	// CheckEvery is how often, at most, the files are looked at
	// (DefaultCheckEvery if zero; negative: at every handshake).
	CheckEvery time.Duration
	Log        *slog.Logger

	cert            atomic.Pointer[tls.Certificate]
	mu              sync.Mutex // one look at a time; guards what follows
	checked         time.Time  // the last look
	seen            [2]fileStamp
	reloads, failed atomic.Uint64
}

// fileStamp is what tells that a file changed.
type fileStamp struct {
	mod  time.Time
	size int64
}

// LoadCertificates loads the pair of certFile and keyFile, or returns
// an error naming the file at fault.
func LoadCertificates(certFile, keyFile string) (*Certificates, error) {
	c := &Certificates{CertFile: certFile, KeyFile: keyFile}
	stamps, err := c.stamps()
	if err != nil {
		return nil, err
	}
	if err := c.load(); err != nil {
		return nil, err
	}
	c.seen, c.checked = stamps, time.Now()
	return c, nil
}

func (c *Certificates) stamps() ([2]fileStamp, error) {
	var s [2]fileStamp
	for i, name := range []string{c.CertFile, c.KeyFile} {
		fi, err := os.Stat(name)
		if err != nil {
			return s, fmt.Errorf("wss: %w", err)
		}
		s[i] = fileStamp{fi.ModTime(), fi.Size()}
	}
	return s, nil
}

func (c *Certificates) load() error {
	pair, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
	if err != nil {
		return fmt.Errorf("wss: certificate %s and key %s: %w", c.CertFile, c.KeyFile, err)
	}
	c.cert.Store(&pair)
	return nil
}

// GetCertificate is the listener's tls.Config.GetCertificate.
func (c *Certificates) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.check(time.Now())
	return c.cert.Load(), nil
}

// check loads the pair again if a file changed since the last look, at
// most every CheckEvery.
func (c *Certificates) check(now time.Time) {
	every := c.CheckEvery
	if every == 0 {
		every = DefaultCheckEvery
	}
	if !c.mu.TryLock() {
		return // another handshake is looking
	}
	defer c.mu.Unlock()
	if now.Sub(c.checked) < every {
		return
	}
	c.checked = now
	stamps, err := c.stamps()
	if err == nil && stamps == c.seen {
		return
	}
	if err == nil {
		err = c.load()
	}
	if err != nil {
		c.failed.Add(1)
		if c.Log != nil {
			c.Log.Error("wss: the certificate changed and does not load; the previous one is served", "err", err)
		}
		return
	}
	c.seen = stamps
	c.reloads.Add(1)
	if c.Log != nil {
		c.Log.Info("wss: certificate loaded again", "cert", c.CertFile)
	}
}

// Reloads returns how many times the pair was loaded again, and how many
// looks found a change that did not load.
func (c *Certificates) Reloads() (loaded, failed uint64) {
	return c.reloads.Load(), c.failed.Load()
}

// TLSConfig returns the TLS configuration of a wss listener serving c:
// TLS 1.2 at least, HTTP/1.1 (WebSocket's upgrade).
func (c *Certificates) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: c.GetCertificate,
		NextProtos:     []string{"http/1.1"},
	}
}
