// Package certtest writes the TLS certificates tests serve: a
// self-signed certificate for 127.0.0.1 and its key, as PEM files.
package certtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"testing"
	"time"
)

// WriteSelfSigned writes a certificate for 127.0.0.1 named cn, valid for
// an hour and signed by itself, to certFile and its key to keyFile, and
// returns the certificate (a client trusts it by adding it to its
// roots). The key is written first: a reader between the two writes
// finds a pair that does not match, never a certificate without its key.
func WriteSelfSigned(t testing.TB, certFile, keyFile, cn string) *x509.Certificate {
	t.Helper()
	return write(t, certFile, keyFile, cn, x509.ExtKeyUsageServerAuth, time.Now().Add(time.Hour))
}

// WriteClient is WriteSelfSigned for a client certificate (extended key
// usage client authentication): a server that lists it among its client
// CAs verifies it.
func WriteClient(t testing.TB, certFile, keyFile, cn string) *x509.Certificate {
	t.Helper()
	return write(t, certFile, keyFile, cn, x509.ExtKeyUsageClientAuth, time.Now().Add(time.Hour))
}

// WriteExpiredClient is WriteClient for a certificate that expired a
// minute ago: a server that lists it among its client CAs must still
// refuse it.
func WriteExpiredClient(t testing.TB, certFile, keyFile, cn string) *x509.Certificate {
	t.Helper()
	return write(t, certFile, keyFile, cn, x509.ExtKeyUsageClientAuth, time.Now().Add(-time.Minute))
}

func write(t testing.TB, certFile, keyFile, cn string, usage x509.ExtKeyUsage, notAfter time.Time) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              notAfter,
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{usage},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
