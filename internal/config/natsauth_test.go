package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nkeys"

	"github.com/udpgate/udpgate/internal/natstest"
)

// Secrets that must never be printed.
const (
	testPassword = "pw-Zq8r3LkT"
	testToken    = "tok-9HxW2mVdPs"
)

// TestNATSAuthConfig checks the authentication variables at configuration
// time: conflicts and unusable files are reported, each naming its
// variable, and no problem and no printed config shows a secret.
func TestNATSAuthConfig(t *testing.T) {
	pki := natstest.NewPKI(t)
	dir := t.TempDir()
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	seedPath := filepath.Join(dir, "user.nk")
	if err := os.WriteFile(seedPath, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	accKP, _ := nkeys.CreateAccount()
	accSeed, _ := accKP.Seed()
	accSeedPath := filepath.Join(dir, "account.nk")
	if err := os.WriteFile(accSeedPath, accSeed, 0o600); err != nil {
		t.Fatal(err)
	}
	upub, _ := kp.PublicKey()
	expired := jwt.NewUserClaims(upub)
	expired.Expires = time.Now().Add(-time.Hour).Unix()
	tok, err := expired.Encode(accKP)
	if err != nil {
		t.Fatal(err)
	}
	credsBytes, _ := jwt.FormatUserConfig(tok, seed)
	expiredPath := filepath.Join(dir, "expired.creds")
	if err := os.WriteFile(expiredPath, credsBytes, 0o600); err != nil {
		t.Fatal(err)
	}
	unreadable := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name string
		set  func(*env)
		want []string
	}{
		{"all valid", func(e *env) {
			e.NATSNkey, e.NATSCA, e.NATSCert, e.NATSKey, e.NATSInbox = seedPath, pki.CA, pki.ClientCert, pki.ClientKey, "_INBOX_gw"
		}, nil},
		{"token and password", func(e *env) { e.NATSUser, e.NATSPassword, e.NATSToken = "u", testPassword, testToken },
			[]string{"UDPGATE_NATS_TOKEN: set together with UDPGATE_NATS_USER: choose one way"}},
		{"nkey and creds", func(e *env) { e.NATSNkey, e.NATSCreds = seedPath, expiredPath },
			[]string{"UDPGATE_NATS_CREDS: set together with UDPGATE_NATS_NKEY"}},
		{"password alone", func(e *env) { e.NATSPassword = testPassword }, []string{"UDPGATE_NATS_PASSWORD: set without UDPGATE_NATS_USER"}},
		{"user alone", func(e *env) { e.NATSUser = "u" }, []string{"UDPGATE_NATS_USER: set without UDPGATE_NATS_PASSWORD"}},
		{"URL credentials and a token", func(e *env) { e.NATSURL = "nats://u:" + testPassword + "@127.0.0.1:4222"; e.NATSToken = testToken },
			[]string{"UDPGATE_NATS_URL: nats://u:xxxxx@127.0.0.1:4222 carries credentials and UDPGATE_NATS_TOKEN is set too"}},
		{"missing files", func(e *env) {
			e.NATSNkey, e.NATSCA, e.NATSCert, e.NATSKey = unreadable, unreadable, unreadable, unreadable
		},
			[]string{"UDPGATE_NATS_NKEY: open " + unreadable + ": no such file", "UDPGATE_NATS_CA: open " + unreadable, "UDPGATE_NATS_CERT: " + unreadable}},
		{"not a seed", func(e *env) { e.NATSNkey = pki.CA }, []string{"UDPGATE_NATS_NKEY: " + pki.CA + " does not hold an nkey user seed"}},
		{"an account seed", func(e *env) { e.NATSNkey = accSeedPath }, []string{"UDPGATE_NATS_NKEY: " + accSeedPath + " does not hold an nkey user seed"}},
		{"a seed as creds", func(e *env) { e.NATSCreds = seedPath }, []string{"UDPGATE_NATS_CREDS: " + seedPath + " is not a NATS credentials file"}},
		{"expired creds", func(e *env) { e.NATSCreds = expiredPath }, []string{"UDPGATE_NATS_CREDS: " + expiredPath + ": the user JWT expired at"}},
		{"not a CA", func(e *env) { e.NATSCA = seedPath }, []string{"UDPGATE_NATS_CA: " + seedPath + " holds no PEM certificate"}},
		{"cert without key", func(e *env) { e.NATSCert = pki.ClientCert }, []string{"UDPGATE_NATS_CERT: set without UDPGATE_NATS_KEY"}},
		{"key without cert", func(e *env) { e.NATSKey = pki.ClientKey }, []string{"UDPGATE_NATS_KEY: set without UDPGATE_NATS_CERT"}},
		{"key of another cert", func(e *env) { e.NATSCert, e.NATSKey = pki.ClientCert, pki.ServerKey },
			[]string{"UDPGATE_NATS_CERT: " + pki.ClientCert + " with key " + pki.ServerKey + ": tls: private key does not match public key"}},
		{"wildcard inbox", func(e *env) { e.NATSInbox = "_INBOX.>" }, []string{"UDPGATE_NATS_INBOX_PREFIX:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := defaults(t)
			tt.set(&e)
			cfg, err := e.parse(nil)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatal(err)
				}
			} else if err == nil {
				t.Fatal("no error")
			}
			var msg string
			if err != nil {
				msg = err.Error()
			}
			for _, want := range tt.want {
				if !strings.Contains(msg, want) {
					t.Errorf("error does not say %q:\n%s", want, msg)
				}
			}
			printed := msg + fmt.Sprintf("%v %+v %#v %s", cfg, cfg, cfg, cfg.NATSAuth.Password)
			for _, s := range []string{testPassword, testToken, string(seed)} {
				if strings.Contains(printed, s) {
					t.Errorf("a secret is printed:\n%s", printed)
				}
			}
		})
	}
}
