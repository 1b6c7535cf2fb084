package config

import (
	"crypto/x509"
	"errors"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/udpgate/udpgate/dtls"
)

// parseDTLS checks the UDPGATE_DTLS_* variables, naming each bad one with
// bad; used says a listener is coaps or dtls, which needs a PSK file or a
// certificate. The files are read here too, so that a key file that does
// not parse is named at start.
func (e env) parseDTLS(bad func(name, format string, args ...any), used bool) DTLS {
	d := DTLS{
		PSKFile: strings.TrimSpace(e.DTLSPSKFile), CertFile: strings.TrimSpace(e.DTLSCertFile),
		KeyFile: strings.TrimSpace(e.DTLSKeyFile), ClientCA: strings.TrimSpace(e.DTLSClientCA),
	}
	if (d.CertFile == "") != (d.KeyFile == "") {
		bad("DTLS_CERT_FILE", "and UDPGATE_DTLS_KEY_FILE go together: set both or neither")
	}
	if used && d.PSKFile == "" && d.CertFile == "" {
		bad("DTLS_PSK_FILE", "a coaps or dtls listener needs keys or a certificate: set UDPGATE_DTLS_PSK_FILE, or UDPGATE_DTLS_CERT_FILE and UDPGATE_DTLS_KEY_FILE")
	}
	if d.PSKFile != "" {
		if b, err := os.ReadFile(d.PSKFile); err != nil {
			bad("DTLS_PSK_FILE", "%v", err)
		} else if _, err := dtls.ParseKeys(b); err != nil {
			bad("DTLS_PSK_FILE", "%s: %v", d.PSKFile, err)
		}
	}
	if d.ClientCA != "" {
		if _, err := LoadCAs(d.ClientCA); err != nil {
			bad("DTLS_CLIENT_CA", "%v", err)
		}
		if d.CertFile == "" {
			bad("DTLS_CLIENT_CA", "verifies client certificates, which only certificate suites use: set UDPGATE_DTLS_CERT_FILE and UDPGATE_DTLS_KEY_FILE too")
		}
	}
	if n, err := strconv.Atoi(strings.TrimSpace(e.DTLSMaxSessions)); err != nil || n < 1 || n > 1<<20 {
		bad("DTLS_MAX_SESSIONS", "%q is not a number of sessions from 1 to %d", e.DTLSMaxSessions, 1<<20)
	} else {
		d.MaxSessions = n
	}
	dur := func(name, s string, dst *time.Duration) {
		if v, err := time.ParseDuration(strings.TrimSpace(s)); err != nil || v <= 0 {
			bad(name, "%q is not a positive duration (like 30s, 5m)", s)
		} else {
			*dst = v
		}
	}
	dur("DTLS_IDLE", e.DTLSIdle, &d.Idle)
	dur("DTLS_HANDSHAKE_TIMEOUT", e.DTLSHandshakeTimeout, &d.HandshakeTimeout)
	if f, err := strconv.ParseFloat(strings.TrimSpace(e.DTLSHandshakeRate), 64); err != nil || f < 0 || f > 1e6 || math.IsNaN(f) {
		bad("DTLS_HANDSHAKE_RATE", "%q is not a rate between 0 (no limit) and 1e6 per second", e.DTLSHandshakeRate)
	} else {
		d.HandshakeRate = f
	}
	return d
}

// LoadCAs reads a PEM file of CA certificates into a pool.
func LoadCAs(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, &os.PathError{Op: "load", Path: path, Err: errNoCertificates}
	}
	return pool, nil
}

var errNoCertificates = errors.New("no PEM certificate in the file")
