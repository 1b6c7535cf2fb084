package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// NATSAuth is how a udpgate process authenticates to NATS and verifies the
// server: at most one of user and password, token, nkey seed file or
// credentials file, and optionally TLS with a custom CA and a client
// certificate. Files are checked at start and named to nats.go, which reads
// the credentials, CA and certificate files again at each reconnect, so a
// rotated file is picked up.
type NATSAuth struct {
	User      string
	Password  Secret
	Token     Secret
	NkeyFile  string // nkey user seed (SU...)
	CredsFile string // user JWT and seed, as nsc writes them
	CAFile    string // PEM CA certificates that verify the server
	CertFile  string // PEM client certificate, with KeyFile
	KeyFile   string
	Inbox     string // custom inbox prefix; "" is nats.go's _INBOX
}

// Secret is a configured password or token. Formatting and logging it
// prints a placeholder, so a config printed with %+v or logged whole shows
// no secret.
type Secret string

const redacted = "[redacted]"

// Format prints the placeholder for every verb.
func (s Secret) Format(f fmt.State, _ rune) { fmt.Fprint(f, redacted) }

// LogValue logs the placeholder.
func (s Secret) LogValue() slog.Value { return slog.StringValue(redacted) }

// MarshalText encodes the placeholder (encoding/json and the like).
func (s Secret) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// URLs is UDPGATE_NATS_URL, a comma-separated list of URLs. It formats
// with passwords and tokens hidden.
type URLs string

// Format prints the URLs with their secrets hidden, for every verb.
func (u URLs) Format(f fmt.State, _ rune) { fmt.Fprint(f, RedactURLs(string(u))) }

// LogValue logs the URLs with their secrets hidden.
func (u URLs) LogValue() slog.Value { return slog.StringValue(RedactURLs(string(u))) }

// method names the configured way to authenticate, by its variables, or
// "" when none is configured.
func (a NATSAuth) method() string {
	switch {
	case a.User != "":
		return "UDPGATE_NATS_USER and UDPGATE_NATS_PASSWORD"
	case a.Token != "":
		return "UDPGATE_NATS_TOKEN"
	case a.NkeyFile != "":
		return "UDPGATE_NATS_NKEY"
	case a.CredsFile != "":
		return "UDPGATE_NATS_CREDS"
	}
	return ""
}

// parseNATSAuth checks the NATS authentication and TLS variables of e,
// reporting each problem with bad. Files must exist, be readable and hold
// what their variable says; no problem quotes a Secret or a file's contents.
func (e env) parseNATSAuth(bad func(name, format string, args ...any)) NATSAuth {
	a := NATSAuth{
		User: e.NATSUser, Password: Secret(e.NATSPassword), Token: Secret(e.NATSToken),
		NkeyFile: e.NATSNkey, CredsFile: e.NATSCreds, CAFile: e.NATSCA,
		CertFile: e.NATSCert, KeyFile: e.NATSKey, Inbox: e.NATSInbox,
	}
	// At most one way to authenticate.
	var methods []string // the variable of each method set
	if a.User != "" || a.Password != "" {
		methods = append(methods, "NATS_USER")
		switch {
		case a.User == "":
			bad("NATS_PASSWORD", "set without UDPGATE_NATS_USER")
		case a.Password == "":
			bad("NATS_USER", "set without UDPGATE_NATS_PASSWORD")
		}
	}
	if a.Token != "" {
		methods = append(methods, "NATS_TOKEN")
	}
	if a.NkeyFile != "" {
		methods = append(methods, "NATS_NKEY")
	}
	if a.CredsFile != "" {
		methods = append(methods, "NATS_CREDS")
	}
	for _, m := range methods[min(1, len(methods)):] {
		bad(m, "set together with %s_%s: choose one way to authenticate to NATS", Prefix, methods[0])
	}
	if urlCredentials(e.NATSURL) && len(methods) > 0 {
		bad("NATS_URL", "%s carries credentials and %s_%s is set too: use one or the other", RedactURLs(e.NATSURL), Prefix, methods[0])
	}

	if a.NkeyFile != "" {
		if err := checkNkeySeed(a.NkeyFile); err != nil {
			bad("NATS_NKEY", "%v", err)
		}
	}
	if a.CredsFile != "" {
		if err := checkCreds(a.CredsFile); err != nil {
			bad("NATS_CREDS", "%v", err)
		}
	}
	if a.CAFile != "" {
		if err := checkCA(a.CAFile); err != nil {
			bad("NATS_CA", "%v", err)
		}
	}
	switch {
	case a.CertFile != "" && a.KeyFile == "":
		bad("NATS_CERT", "set without UDPGATE_NATS_KEY (the client certificate's private key)")
	case a.CertFile == "" && a.KeyFile != "":
		bad("NATS_KEY", "set without UDPGATE_NATS_CERT (the client certificate)")
	case a.CertFile != "":
		if _, err := tls.LoadX509KeyPair(a.CertFile, a.KeyFile); err != nil {
			bad("NATS_CERT", "%s with key %s: %v", a.CertFile, a.KeyFile, err)
		}
	}
	if a.Inbox != "" && (strings.ContainsAny(a.Inbox, "*> \t") || strings.HasPrefix(a.Inbox, ".") || strings.HasSuffix(a.Inbox, ".") || strings.Contains(a.Inbox, "..")) {
		bad("NATS_INBOX_PREFIX", "%q is not a subject prefix without wildcards (like _INBOX_gateway)", a.Inbox)
	}
	return a
}

// urlCredentials says whether a URL of a comma-separated list carries a
// user, password or token.
func urlCredentials(urls string) bool {
	for _, raw := range strings.Split(urls, ",") {
		if u, err := url.Parse(strings.TrimSpace(raw)); err == nil && u.User != nil {
			return true
		}
	}
	return false
}

// wipe overwrites key material read from a file.
func wipe(b []byte) {
	for i := range b {
		b[i] = 'x'
	}
}

// checkNkeySeed checks that path holds an nkey user seed.
func checkNkeySeed(path string) error {
	b, err := os.ReadFile(path) // an error names the path, never the contents
	if err != nil {
		return err
	}
	defer wipe(b)
	kp, err := nkeys.ParseDecoratedUserNKey(b)
	if err != nil {
		return fmt.Errorf("%s does not hold an nkey user seed (a line starting SU, as `nsc generate nkey --user` or `nk -gen user` writes)", path)
	}
	kp.Wipe()
	return nil
}

// checkCreds checks that path is a credentials file: a user JWT, not
// expired, and the seed of the user it names.
func checkCreds(path string) error {
	b, err := os.ReadFile(path) // an error names the path, never the contents
	if err != nil {
		return err
	}
	defer wipe(b)
	notCreds := fmt.Errorf("%s is not a NATS credentials file (a user JWT and its nkey seed, as `nsc generate creds` writes)", path)
	token, err := nkeys.ParseDecoratedJWT(b)
	if err != nil {
		return notCreds
	}
	claims, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return notCreds // the error could quote the file
	}
	kp, err := nkeys.ParseDecoratedUserNKey(b)
	if err != nil {
		return notCreds
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil || pub != claims.Subject {
		return fmt.Errorf("%s: the seed is not the one of the JWT's user %s", path, claims.Subject)
	}
	if claims.Expires != 0 && time.Unix(claims.Expires, 0).Before(time.Now()) {
		return fmt.Errorf("%s: the user JWT expired at %s", path, time.Unix(claims.Expires, 0).UTC().Format(time.RFC3339))
	}
	return nil
}

// checkCA checks that path holds at least one PEM certificate.
func checkCA(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !x509.NewCertPool().AppendCertsFromPEM(b) {
		return fmt.Errorf("%s holds no PEM certificate", path)
	}
	return nil
}

// natsOptions are the connection options every command that connects to
// NATS uses: authentication, TLS and the inbox prefix.
func (a NATSAuth) Options() ([]nats.Option, error) {
	var opts []nats.Option
	switch {
	case a.User != "":
		opts = append(opts, nats.UserInfo(a.User, string(a.Password)))
	case a.Token != "":
		opts = append(opts, nats.Token(string(a.Token)))
	case a.NkeyFile != "":
		o, err := nats.NkeyOptionFromSeed(a.NkeyFile)
		if err != nil {
			return nil, fmt.Errorf("UDPGATE_NATS_NKEY: %s: %w", a.NkeyFile, err)
		}
		opts = append(opts, o)
	case a.CredsFile != "":
		opts = append(opts, nats.UserCredentials(a.CredsFile))
	}
	if a.CAFile != "" {
		opts = append(opts, nats.RootCAs(a.CAFile))
	}
	if a.CertFile != "" {
		opts = append(opts, nats.ClientCert(a.CertFile, a.KeyFile))
	}
	if a.Inbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(a.Inbox))
	}
	return opts, nil
}

// natsRefusal explains why a connection to NATS failed, naming the
// variables to check. It returns "" when it has nothing to add.
func (a NATSAuth) Refusal(natsURL string, err error) string {
	var (
		unknownCA *x509.UnknownAuthorityError
		hostname  x509.HostnameError
		verify    *tls.CertificateVerificationError
	)
	msg := err.Error()
	switch {
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAuthRevoked):
		if m := a.method(); m != "" {
			return "the server refused " + m
		}
		if urlCredentials(natsURL) {
			return "the server refused the credentials in UDPGATE_NATS_URL"
		}
		return "the server requires credentials: set UDPGATE_NATS_USER and UDPGATE_NATS_PASSWORD, UDPGATE_NATS_TOKEN, UDPGATE_NATS_NKEY or UDPGATE_NATS_CREDS"
	case errors.Is(err, nats.ErrSecureConnRequired):
		return "the server requires TLS: set UDPGATE_NATS_CA to the CA of its certificate (or use a tls:// URL if a public CA signed it)"
	case errors.Is(err, nats.ErrSecureConnWanted):
		return "UDPGATE_NATS_CA, UDPGATE_NATS_CERT or a tls:// URL asks for TLS, but the server does not offer it"
	case errors.As(err, &unknownCA), errors.As(err, &verify), errors.As(err, &hostname):
		if a.CAFile == "" {
			return "the server's certificate is not signed by a CA this host trusts: set UDPGATE_NATS_CA to the PEM file of its CA"
		}
		return "the server's certificate does not verify with UDPGATE_NATS_CA " + a.CAFile + " (wrong CA, or a certificate that does not name the host of UDPGATE_NATS_URL)"
	case errors.Is(err, nats.ErrTLS) && strings.Contains(msg, "closed by remote after TLS handshake"):
		// TLS 1.3: the server checks the client's certificate after the
		// handshake, and closes the connection without an alert nats.go sees.
		if a.CertFile == "" {
			return "the server closed the connection after the TLS handshake: it probably requires a client certificate (set UDPGATE_NATS_CERT and UDPGATE_NATS_KEY)"
		}
		return "the server closed the connection after the TLS handshake: it probably refused the client certificate UDPGATE_NATS_CERT " + a.CertFile
	case strings.Contains(msg, "certificate required"), strings.Contains(msg, "bad certificate"),
		strings.Contains(msg, "unknown certificate authority"), strings.Contains(msg, "expired certificate"):
		if a.CertFile == "" {
			return "the server requires a client certificate: set UDPGATE_NATS_CERT and UDPGATE_NATS_KEY"
		}
		return "the server refused the client certificate UDPGATE_NATS_CERT " + a.CertFile
	}
	return ""
}

// RedactURLs hides passwords and tokens in a comma-separated URL list.
func RedactURLs(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil || u.User == nil {
			continue
		}
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		} else {
			u.User = url.User("xxxxx")
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}
