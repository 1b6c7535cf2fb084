package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/udpgate/udpgate/gateway"
	"github.com/udpgate/udpgate/internal/config"
	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/internal/node"
)

// authEnv clears every UDPGATE_* variable, then sets vars; "" leaves one
// unset.
func authEnv(t *testing.T, vars map[string]string) {
	t.Helper()
	for _, name := range config.KnownVariables() {
		t.Setenv(name, "")
		os.Unsetenv(name)
	}
	for k, v := range vars {
		if v != "" {
			t.Setenv(k, v)
		}
	}
}

const (
	testPassword = "pw-Zq8r3LkT"    // must never be printed
	testToken    = "tok-9HxW2mVdPs" // must never be printed
)

// waitFor polls cond until it holds, or fails the test after 20 s.
func waitFor(t *testing.T, what string, cond func() bool, done <-chan error, out ...*syncBuffer) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		select {
		case err := <-done:
			t.Fatalf("%s: exited: %v\n%s", what, err, dump(out))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after 20s\n%s", what, dump(out))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func dump(bs []*syncBuffer) string {
	var s []string
	for _, b := range bs {
		s = append(s, b.String())
	}
	return strings.Join(s, "\n")
}

// process is a udpgate command running in-process.
type process struct {
	out, err syncBuffer
	done     chan error
	cancel   context.CancelFunc
}

// start runs `udpgate args...` with the current environment until the test
// ends; it returns once ready is printed to standard output or standard
// error. The caller may change the environment afterwards.
func start(t *testing.T, ready string, args ...string) *process {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &process{done: make(chan error, 1), cancel: cancel}
	go func() { p.done <- Run(ctx, args, &p.out, &p.err) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-p.done:
			if err != nil {
				t.Errorf("%s: %v", args[0], err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("%s did not stop", args[0])
		}
	})
	waitFor(t, strings.Join(args, " "), func() bool {
		return strings.Contains(p.out.String(), ready) || strings.Contains(p.err.String(), ready)
	}, p.done, &p.out, &p.err)
	return p
}

// ask sends payload to the raw listener on port and returns the reply.
func ask(t *testing.T, port uint16, payload string) string {
	t.Helper()
	var o, e bytes.Buffer
	url := "udp://127.0.0.1:" + strconv.Itoa(int(port))
	if err := Run(context.Background(), []string{"send", "-timeout", "10s", url, payload}, &o, &e); err != nil {
		t.Fatalf("send %s: %v (%s)", url, err, e.String())
	}
	return o.String()
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestNATSTLSAndPassword runs the gateway and a worker against a NATS
// server that requires TLS with a client certificate and a user and
// password: a datagram is answered end to end, nothing prints the
// password, and without each piece both are refused with an error naming
// the variable to set.
func TestNATSTLSAndPassword(t *testing.T) {
	pki := natstest.NewPKI(t)
	opts := natstest.Options(t)
	pki.RequireTLS(t, opts)
	opts.Username, opts.Password = "udpgate", testPassword
	ns := natstest.Start(t, opts)
	port := freeUDPPort(t)
	good := map[string]string{
		"UDPGATE_NATS_URL":        ns.ClientURL(),
		"UDPGATE_NATS_USER":       "udpgate",
		"UDPGATE_NATS_PASSWORD":   testPassword,
		"UDPGATE_NATS_CA":         pki.CA,
		"UDPGATE_NATS_CERT":       pki.ClientCert,
		"UDPGATE_NATS_KEY":        pki.ClientKey,
		"UDPGATE_NODE":            "n1",
		"UDPGATE_LISTENERS":       "127.0.0.1:" + strconv.Itoa(int(port)) + "/raw",
		"UDPGATE_WORKER_SUBJECTS": "udpgate.in." + strconv.Itoa(int(port)),
		"UDPGATE_HTTP_LISTEN":     "127.0.0.1:0",
		"UDPGATE_STREAM_STORAGE":  "memory",
		// nats-server 2.15 reads a new connection's id unlocked when it
		// answers an account's CONNZ, which the race detector reports in
		// this process, the server's; the gateway's use of it is tested
		// against a server of its own (gateway.TestClusterSubscriptions).
		"UDPGATE_DISCOVERY_SUBSCRIPTIONS": "off",
		"UDPGATE_LOG_LEVEL":               "debug",
		"UDPGATE_LOG_FORMAT":              "json",
	}
	with := func(changes map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range good {
			m[k] = v
		}
		for k, v := range changes {
			m[k] = v
		}
		return m
	}

	t.Run("refused", func(t *testing.T) {
		tests := []struct {
			name    string
			env     map[string]string
			want    []string // in the error
			wantErr string   // the NATS error inside
		}{
			{"no credentials", with(map[string]string{"UDPGATE_NATS_USER": "", "UDPGATE_NATS_PASSWORD": ""}),
				[]string{"set UDPGATE_NATS_USER and UDPGATE_NATS_PASSWORD"}, "Authorization Violation"},
			{"wrong password", with(map[string]string{"UDPGATE_NATS_PASSWORD": "wrong-" + testPassword}),
				[]string{"the server refused UDPGATE_NATS_USER and UDPGATE_NATS_PASSWORD"}, "Authorization Violation"},
			{"no CA", with(map[string]string{"UDPGATE_NATS_CA": ""}),
				[]string{"set UDPGATE_NATS_CA"}, "x509: certificate signed by unknown authority"},
			{"another CA", with(map[string]string{"UDPGATE_NATS_CA": pki.OtherCA}),
				[]string{"does not verify with UDPGATE_NATS_CA " + pki.OtherCA}, "x509: certificate signed by unknown authority"},
			{"no client certificate", with(map[string]string{"UDPGATE_NATS_CERT": "", "UDPGATE_NATS_KEY": ""}),
				[]string{"client certificate", "set UDPGATE_NATS_CERT and UDPGATE_NATS_KEY"}, "tls"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				for _, cmd := range [][]string{{"gateway"}, {"worker", "echo"}} {
					authEnv(t, tt.env)
					var out, errb bytes.Buffer
					err := Run(context.Background(), cmd, &out, &errb)
					if err == nil {
						t.Fatalf("%s connected", cmd[0])
					}
					msg := err.Error()
					for _, want := range append(tt.want, "cannot connect to NATS at "+ns.ClientURL()+" (UDPGATE_NATS_URL)", tt.wantErr) {
						if !strings.Contains(msg, want) {
							t.Errorf("%s: error does not say %q:\n%s", cmd[0], want, msg)
						}
					}
					if all := msg + out.String() + errb.String(); strings.Contains(all, testPassword) {
						t.Errorf("%s printed the password:\n%s", cmd[0], all)
					}
				}
			})
		}
	})

	t.Run("answered", func(t *testing.T) {
		authEnv(t, good)
		gw := start(t, "udpgate gateway:", "gateway")
		w := start(t, `"msg":"worker: serving"`, "worker", "echo")
		if got := ask(t, port, "through TLS"); got != "through TLS\n" {
			t.Errorf("echo replied %q", got)
		}
		metricsURL := regexp.MustCompile(`http://127\.0\.0\.1:\d+`)
		gwMetrics := httpGet(t, metricsURL.FindString(gw.out.String())+"/metrics")
		wURL := regexp.MustCompile(`"url":"(http://127\.0\.0\.1:\d+)"`).FindStringSubmatch(w.err.String())
		if wURL == nil {
			t.Fatalf("the worker logged no metrics URL:\n%s", w.err.String())
		}
		wMetrics := httpGet(t, wURL[1]+"/metrics")
		if !strings.Contains(gwMetrics, "udpgate_") || !strings.Contains(wMetrics, "udpgate_") {
			t.Errorf("no udpgate metrics:\n%.500s\n%.500s", gwMetrics, wMetrics)
		}
		for where, s := range map[string]string{
			"gateway output": gw.out.String() + gw.err.String(), "worker output": w.out.String() + w.err.String(),
			"gateway metrics": gwMetrics, "worker metrics": wMetrics,
		} {
			if strings.Contains(s, testPassword) {
				t.Errorf("%s shows the password", where)
			}
		}
	})
}

// TestNATSAuthMethods connects with each way to authenticate, and with a
// wrong secret of each kind, through connectNATS, which every command
// that connects to NATS uses.
func TestNATSAuthMethods(t *testing.T) {
	pki := natstest.NewPKI(t)
	dir := t.TempDir()
	writeFile := func(name string, b []byte) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	seedFile := func(name string) (string, string) {
		t.Helper()
		kp, err := nkeys.CreateUser()
		if err != nil {
			t.Fatal(err)
		}
		seed, _ := kp.Seed()
		pub, _ := kp.PublicKey()
		return writeFile(name, append(seed, '\n')), pub
	}
	goodSeed, goodPub := seedFile("good.nk")
	wrongSeed, _ := seedFile("wrong.nk")

	// Operator mode: an operator signs an account that signs users.
	opKP, _ := nkeys.CreateOperator()
	opPub, _ := opKP.PublicKey()
	opClaims := jwt.NewOperatorClaims(opPub)
	opClaims.Name = "test operator"
	opJWT, err := opClaims.Encode(opKP)
	if err != nil {
		t.Fatal(err)
	}
	trusted, err := jwt.DecodeOperatorClaims(opJWT)
	if err != nil {
		t.Fatal(err)
	}
	account := func() (nkeys.KeyPair, string, string) {
		kp, _ := nkeys.CreateAccount()
		pub, _ := kp.PublicKey()
		ac := jwt.NewAccountClaims(pub)
		tok, err := ac.Encode(opKP)
		if err != nil {
			t.Fatal(err)
		}
		return kp, pub, tok
	}
	creds := func(name string, accKP nkeys.KeyPair, expires time.Time) string {
		t.Helper()
		ukp, _ := nkeys.CreateUser()
		upub, _ := ukp.PublicKey()
		uc := jwt.NewUserClaims(upub)
		if !expires.IsZero() {
			uc.Expires = expires.Unix()
		}
		tok, err := uc.Encode(accKP)
		if err != nil {
			t.Fatal(err)
		}
		seed, _ := ukp.Seed()
		b, err := jwt.FormatUserConfig(tok, seed)
		if err != nil {
			t.Fatal(err)
		}
		return writeFile(name, b)
	}
	accKP, accPub, accJWT := account()
	strangerKP, _, _ := account() // not known to the server
	resolver := &server.MemAccResolver{}
	if err := resolver.Store(accPub, accJWT); err != nil {
		t.Fatal(err)
	}
	goodCreds := creds("good.creds", accKP, time.Time{})
	strangerCreds := creds("stranger.creds", strangerKP, time.Time{})

	plain := func(f func(*server.Options)) *server.Server {
		o := &server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true}
		f(o)
		return natstest.Start(t, o)
	}
	userSrv := plain(func(o *server.Options) { o.Username, o.Password = "u", testPassword })
	tokenSrv := plain(func(o *server.Options) { o.Authorization = testToken })
	nkeySrv := plain(func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: goodPub}} })
	opSrv := plain(func(o *server.Options) {
		o.TrustedOperators = []*jwt.OperatorClaims{trusted}
		o.AccountResolver = resolver
	})
	withCreds := func(u, userinfo string) string { return strings.Replace(u, "nats://", "nats://"+userinfo+"@", 1) }

	tests := []struct {
		name  string
		url   string
		env   map[string]string
		error string // "" connects
	}{
		{"user and password", userSrv.ClientURL(), map[string]string{"UDPGATE_NATS_USER": "u", "UDPGATE_NATS_PASSWORD": testPassword}, ""},
		{"wrong password", userSrv.ClientURL(), map[string]string{"UDPGATE_NATS_USER": "u", "UDPGATE_NATS_PASSWORD": testToken}, "the server refused UDPGATE_NATS_USER and UDPGATE_NATS_PASSWORD"},
		{"password in the URL", withCreds(userSrv.ClientURL(), "u:"+testPassword), nil, ""},
		{"wrong password in the URL", withCreds(userSrv.ClientURL(), "u:"+testToken), nil, "the server refused the credentials in UDPGATE_NATS_URL"},
		{"token", tokenSrv.ClientURL(), map[string]string{"UDPGATE_NATS_TOKEN": testToken}, ""},
		{"wrong token", tokenSrv.ClientURL(), map[string]string{"UDPGATE_NATS_TOKEN": testPassword}, "the server refused UDPGATE_NATS_TOKEN"},
		{"token in the URL", withCreds(tokenSrv.ClientURL(), testToken), nil, ""},
		{"nkey", nkeySrv.ClientURL(), map[string]string{"UDPGATE_NATS_NKEY": goodSeed}, ""},
		{"wrong nkey", nkeySrv.ClientURL(), map[string]string{"UDPGATE_NATS_NKEY": wrongSeed}, "the server refused UDPGATE_NATS_NKEY"},
		{"no nkey", nkeySrv.ClientURL(), nil, "set UDPGATE_NATS_USER and UDPGATE_NATS_PASSWORD, UDPGATE_NATS_TOKEN, UDPGATE_NATS_NKEY or UDPGATE_NATS_CREDS"},
		{"creds", opSrv.ClientURL(), map[string]string{"UDPGATE_NATS_CREDS": goodCreds}, ""},
		{"creds of an unknown account", opSrv.ClientURL(), map[string]string{"UDPGATE_NATS_CREDS": strangerCreds}, "the server refused UDPGATE_NATS_CREDS"},
		{"TLS the server does not offer", userSrv.ClientURL(), map[string]string{"UDPGATE_NATS_USER": "u", "UDPGATE_NATS_PASSWORD": testPassword, "UDPGATE_NATS_CA": pki.CA},
			"nats: secure connection not available: UDPGATE_NATS_CA, UDPGATE_NATS_CERT or a tls:// URL asks for TLS, but the server does not offer it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vars := maps.Clone(tt.env)
			if vars == nil {
				vars = map[string]string{}
			}
			vars["UDPGATE_NATS_URL"], vars["UDPGATE_NODE"] = tt.url, "n1"
			authEnv(t, vars)
			cfg, err := config.Load()
			if err != nil {
				t.Fatal(err)
			}
			nc, err := node.Connect(cfg, "test")
			if tt.error == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				nc.Close()
				return
			}
			if err == nil {
				nc.Close()
				t.Fatal("connected")
			}
			if !strings.Contains(err.Error(), tt.error) || !strings.Contains(err.Error(), "cannot connect to NATS at "+config.RedactURLs(tt.url)+" (UDPGATE_NATS_URL): nats: ") {
				t.Errorf("error %q does not say %q", err, tt.error)
			}
			for _, s := range []string{testPassword, testToken} {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error %q shows a secret", err)
				}
			}
		})
	}
}

// TestNATSPermissions runs the gateway, a direct worker group, the Lambda
// bridge and a durable worker group through a NATS server started from
// deploy/nats/permissions.conf (its client port and store moved to free
// ones, its example ports to free ones): each does its job with only the
// rights the file gives it, and the worker's user is refused when it
// publishes a request or a reply it was not asked for, reads other
// requests or another user's inbox, or deletes the stream.
func TestNATSPermissions(t *testing.T) {
	echoPort, shoutPort := freeUDPPort(t), freeUDPPort(t)
	echoSubject, shoutSubject := "udpgate.in."+strconv.Itoa(int(echoPort)), "udpgate.in."+strconv.Itoa(int(shoutPort))
	password := map[string]string{"gateway": "gw-" + testPassword, "worker-echo": "w-" + testPassword, "lambda-shout": "l-" + testPassword, "worker-archive": "a-" + testPassword}
	t.Setenv("NATS_GATEWAY_PASSWORD", password["gateway"])
	t.Setenv("NATS_WORKER_PASSWORD", password["worker-echo"])
	t.Setenv("NATS_LAMBDA_PASSWORD", password["lambda-shout"])
	t.Setenv("NATS_ARCHIVE_PASSWORD", password["worker-archive"])
	conf, err := os.ReadFile("deploy/nats/permissions.conf")
	if err != nil {
		t.Fatal(err)
	}
	for _, example := range []string{"udpgate.in.9000 ", "udpgate.in.9002 "} {
		if !bytes.Contains(conf, []byte(example)) {
			t.Fatalf("deploy/nats/permissions.conf no longer names %q", example)
		}
	}
	conf = bytes.ReplaceAll(conf, []byte("udpgate.in.9000 "), []byte(echoSubject+" "))
	conf = bytes.ReplaceAll(conf, []byte("udpgate.in.9002 "), []byte(shoutSubject+" "))
	confFile := filepath.Join(t.TempDir(), "permissions.conf")
	if err := os.WriteFile(confFile, conf, 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(confFile)
	if err != nil {
		t.Fatal(err)
	}
	opts.Host, opts.Port, opts.StoreDir, opts.NoLog, opts.NoSigs = "127.0.0.1", server.RANDOM_PORT, t.TempDir(), true, true
	ns := natstest.Start(t, opts)

	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev struct{ Data []byte }
		if err := json.NewDecoder(r.Body).Decode(&ev); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		json.NewEncoder(w).Encode(strings.ToUpper(string(ev.Data)))
	}))
	defer fn.Close()
	as := func(user, inbox string, more map[string]string) {
		vars := map[string]string{
			"UDPGATE_NATS_URL": ns.ClientURL(), "UDPGATE_NATS_USER": user, "UDPGATE_NATS_PASSWORD": password[user],
			"UDPGATE_NATS_INBOX_PREFIX": inbox, "UDPGATE_NODE": "n1", "UDPGATE_HTTP_LISTEN": "127.0.0.1:0",
			"UDPGATE_STREAM_STORAGE":          "memory",
			"UDPGATE_DISCOVERY_SUBSCRIPTIONS": "off", // see TestNATSTLSAndPassword
		}
		for k, v := range more {
			vars[k] = v
		}
		authEnv(t, vars)
	}
	as("gateway", "_INBOX_gateway", map[string]string{
		"UDPGATE_LISTENERS": fmt.Sprintf("127.0.0.1:%d/raw,127.0.0.1:%d/raw", echoPort, shoutPort),
	})
	gw := start(t, "udpgate gateway:", "gateway")
	as("worker-echo", "_INBOX_echo", map[string]string{"UDPGATE_WORKER_SUBJECTS": echoSubject})
	start(t, "worker: serving", "worker", "echo")
	as("worker-archive", "_INBOX_archive", map[string]string{
		"UDPGATE_WORKER_SUBJECTS": echoSubject, "UDPGATE_WORKER_GROUP": "archive", "UDPGATE_DELIVERY": "durable",
	})
	start(t, "worker: serving", "worker", "echo")
	as("lambda-shout", "_INBOX_lambda-shout", map[string]string{
		"UDPGATE_LAMBDA_FUNCTION": "shout", "UDPGATE_LAMBDA_SUBJECTS": shoutSubject, "UDPGATE_LAMBDA_ENDPOINT": fn.URL,
	})
	t.Setenv("AWS_REGION", "eu-central-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	start(t, "lambda: serving", "lambda")
	if got := ask(t, echoPort, "least privilege"); got != "least privilege\n" {
		t.Errorf("echo replied %q", got)
	}
	if got := ask(t, shoutPort, "least privilege"); got != "LEAST PRIVILEGE\n" {
		t.Errorf("the Lambda bridge replied %q", got)
	}

	// The gateway knows every group with its least privileges, from
	// their announcements.
	metrics := regexp.MustCompile(`metrics (http://\S+)/metrics`).FindStringSubmatch(gw.out.String())
	if metrics == nil {
		t.Fatalf("the gateway printed no metrics URL:\n%s", gw.out.String())
	}
	waitFor(t, "the gateway's status lists echo, archive and lambda-shout", func() bool {
		var o, e bytes.Buffer
		if err := Run(context.Background(), []string{"status", "-json", "-url", metrics[1]}, &o, &e); err != nil {
			t.Fatalf("status: %v (%s)", err, e.String())
		}
		var st gateway.Status
		if err := json.Unmarshal(o.Bytes(), &st); err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"echo": "direct", "archive": "durable", "lambda-shout": "direct"}
		for _, gr := range st.Groups {
			if want[gr.Name] == gr.Delivery && gr.Announced && gr.Instances == 1 {
				delete(want, gr.Name)
			}
		}
		return len(want) == 0
	}, nil)

	// The durable group acknowledged its request, once: its acks are
	// allowed.
	violations := make(chan error, 10)
	connect := func(user, inbox string) *nats.Conn {
		nc, err := nats.Connect(ns.ClientURL(), nats.UserInfo(user, password[user]), nats.CustomInboxPrefix(inbox),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	js, err := jetstream.New(connect("worker-archive", "_INBOX_archive"))
	if err != nil {
		t.Fatal(err)
	}
	var info *jetstream.ConsumerInfo
	waitFor(t, "group archive acknowledges", func() bool {
		c, err := js.Consumer(context.Background(), "UDPGATE_IN", "archive")
		if err != nil {
			t.Fatalf("consumer archive: %v", err)
		}
		info = c.CachedInfo()
		return info.Delivered.Consumer > 0 && info.NumAckPending == 0
	}, nil)
	if info.NumRedelivered != 0 || info.AckFloor.Consumer != info.Delivered.Consumer {
		t.Errorf("group archive: %d redelivered, acknowledged %d of %d", info.NumRedelivered, info.AckFloor.Consumer, info.Delivered.Consumer)
	}

	// The worker's user, as a hostile worker would use it.
	nc := connect("worker-echo", "_INBOX_echo")
	refused := func(what, subject string) {
		t.Helper()
		select {
		case err := <-violations:
			if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), subject) {
				t.Errorf("%s: error %v, want a permissions violation on %s", what, err, subject)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s: no permissions violation", what)
		}
	}
	if err := nc.Publish(echoSubject, []byte("forged request")); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	refused("publish a request", echoSubject)
	if _, err := nc.SubscribeSync("udpgate.in.>"); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	refused("read every request", "udpgate.in.>")
	if _, err := nc.QueueSubscribeSync(echoSubject, "another-group"); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	refused("join another group", echoSubject)
	if err := nc.Publish("udpgate.reply.n1.0123456789ab-1", []byte("forged reply")); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	refused("answer a request it was not given", "udpgate.reply.n1.0123456789ab-1")
	if _, err := nc.SubscribeSync("_INBOX_gateway.>"); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	refused("read the gateway's inbox", "_INBOX_gateway.>")
	if err := nc.Publish("$JS.API.STREAM.DELETE.UDPGATE_IN", nil); err != nil {
		t.Fatal(err)
	}
	nc.Flush()
	refused("delete the capture", "$JS.API.STREAM.DELETE.UDPGATE_IN")
}
