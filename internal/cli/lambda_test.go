package cli

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestLambdaCommand moves a port to a Lambda function the way the README
// shows: `udpgate run` opens the port with no worker, `udpgate lambda`
// serves it by invoking a function, here at a local Invoke API endpoint,
// through the real AWS SDK; in a direct group and in a durable one
// (UDPGATE_DELIVERY).
func TestLambdaCommand(t *testing.T) {
	for _, delivery := range []string{"direct", "durable"} {
		t.Run(delivery, func(t *testing.T) { testLambdaCommand(t, delivery) })
	}
}

func testLambdaCommand(t *testing.T, delivery string) {
	invoked := make(chan string, 10)
	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/2015-03-31/functions/shout/invocations" {
			http.Error(w, `{"message":"Function not found"}`, http.StatusNotFound)
			return
		}
		var ev struct {
			Port int
			Data string
		}
		if err := json.NewDecoder(r.Body).Decode(&ev); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		data, _ := base64.StdEncoding.DecodeString(ev.Data)
		invoked <- string(data)
		json.NewEncoder(w).Encode(strings.ToUpper(string(data)) + "!")
	}))
	defer fn.Close()

	port := freeUDPPort(t)
	t.Setenv("UDPGATE_BUILTINS", "off") // only the port under test
	t.Setenv("UDPGATE_DATA_DIR", t.TempDir())
	t.Setenv("UDPGATE_NATS_LISTEN", "127.0.0.1:0")
	t.Setenv("UDPGATE_LISTENERS", "127.0.0.1:"+strconv.Itoa(int(port))+"/raw")
	t.Setenv("UDPGATE_HTTP_LISTEN", "127.0.0.1:0") // never the fixed default port
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var runOut, runErr syncBuffer
	runDone := make(chan error, 1)
	go func() { runDone <- Run(ctx, []string{"run"}, &runOut, &runErr) }()
	natsURL := regexp.MustCompile(`nats://127\.0\.0\.1:\d+`)
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(runOut.String(), "Ctrl-C stops") {
		if time.Now().After(deadline) {
			t.Fatalf("run did not start:\n%s\n%s", runOut.String(), runErr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}

	t.Setenv("UDPGATE_LISTENERS", "")
	t.Setenv("UDPGATE_NATS_URL", natsURL.FindString(runOut.String()))
	t.Setenv("UDPGATE_LAMBDA_FUNCTION", "shout")
	t.Setenv("UDPGATE_LAMBDA_SUBJECTS", "udpgate.in."+strconv.Itoa(int(port)))
	t.Setenv("UDPGATE_LAMBDA_ENDPOINT", fn.URL)
	t.Setenv("UDPGATE_DELIVERY", delivery)
	t.Setenv("AWS_REGION", "eu-central-1")
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	var lambdaErr syncBuffer
	lambdaDone := make(chan error, 1)
	go func() { lambdaDone <- Run(ctx, []string{"lambda"}, &bytes.Buffer{}, &lambdaErr) }()
	for !strings.Contains(lambdaErr.String(), "workers: serving") {
		select {
		case err := <-lambdaDone:
			t.Fatalf("lambda exited: %v\n%s", err, lambdaErr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("lambda did not start:\n%s", lambdaErr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}

	if !strings.Contains(lambdaErr.String(), `"delivery":"`+delivery+`"`) {
		t.Errorf("the group does not serve in %s delivery:\n%s", delivery, lambdaErr.String())
	}

	var o, e bytes.Buffer
	url := "udp://127.0.0.1:" + strconv.Itoa(int(port))
	// The group receives requests once the SDK says serving (its
	// subscription registered, or its consumer created): the first
	// request is answered.
	if err := Run(context.Background(), []string{"send", "-timeout", "5s", url, "hello"}, &o, &e); err != nil || o.String() != "HELLO!\n" {
		t.Fatalf("send: %v, printed %q (%s)", err, o.String(), e.String())
	}
	if got := <-invoked; got != "hello" {
		t.Errorf("the function got %q", got)
	}
	cancel()
	for _, done := range []chan error{lambdaDone, runDone} {
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("exit: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("did not stop")
		}
	}
}

func TestLambdaCommandNeedsFunctionAndSubjects(t *testing.T) {
	defaults(t) // unsets every UDPGATE_* variable for the test
	t.Setenv("UDPGATE_NODE", "n1")
	err := Run(context.Background(), []string{"lambda"}, &bytes.Buffer{}, &bytes.Buffer{})
	if err == nil || !strings.Contains(err.Error(), "UDPGATE_LAMBDA_FUNCTION: required") || !strings.Contains(err.Error(), "UDPGATE_LAMBDA_SUBJECTS: required") {
		t.Errorf("error %v", err)
	}
}
