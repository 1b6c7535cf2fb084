//go:build unix

package gateway

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/udpgate/udpgate/internal/natstest"
	"github.com/udpgate/udpgate/schemas"
	"github.com/udpgate/udpgate/schemas/placespb"
	"github.com/udpgate/udpgate/schemas/rpcpb"
	"github.com/udpgate/udpgate/workers/builtin"
	"github.com/udpgate/udpgate/ws"
)

// TestWSBrowser: headless Chromium loads a page from another origin (an
// httptest server, allowed by the listener's Origins) that opens a
// WebSocket to the ws listener and calls GetRandom, encoding the Call and
// decoding the Reply in the page with protobufjs
// (testdata/ws-browser/README.md); the test reads the page's DOM over the
// DevTools protocol.
func TestWSBrowser(t *testing.T) {
	bin := chromium(t)
	site := httptest.NewServer(wsPage(t))
	t.Cleanup(site.Close)
	g := &Gateway{}
	wsURL, s := wsGateway(t, g, &ws.Server{Origins: []string{site.URL}})
	port := strings.TrimSuffix(wsURL[strings.LastIndex(wsURL, ":")+1:], "/")
	nc := natstest.Connect(t, s)
	// A plain subscription sees the page's calls as the worker does.
	seen, err := nc.SubscribeSync("udpgate.in." + port + "." + builtin.PlacesService + "." + builtin.PlacesMethod)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	b := startBrowser(t, bin)
	b.navigate(site.URL + "/?ws=" + url.QueryEscape(wsURL))
	b.wait("the page's GetRandom", func() bool {
		st := b.text("#state")
		if strings.HasPrefix(st, "failed") || strings.HasPrefix(st, "closed") {
			b.fatalf("the page says %q", st)
		}
		return st == "ready"
	})
	callID, replyID, status := b.text("#call-id"), b.text("#reply-id"), b.text("#status")
	if callID == "" || replyID != callID || status != rpcpb.Status_STATUS_OK.String() {
		b.fatalf("call id %q, reply id %q, status %q; want the call's id and %v", callID, replyID, status, rpcpb.Status_STATUS_OK)
	}
	// The page's call, as the worker saw it: its id as the page encoded
	// it, and the connection's id, which names the page's push subject
	// (udpgate.ws.CONNECTION.push, schemas/README.md).
	m, err := seen.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn := m.Header.Get(schemas.HeaderWSConnection)
	if m.Header.Get(schemas.HeaderRPCID) != callID || conn == "" {
		t.Errorf("the call's headers %v, the page's call id %s", m.Header, callID)
	}

	var places []struct{ Name, Latitude, Longitude string }
	b.evalJSON(`Array.from(document.querySelectorAll("#places li"), li => ({Name: li.textContent, Latitude: li.dataset.latitude, Longitude: li.dataset.longitude}))`, &places)
	if len(places) != 3 {
		b.fatalf("the page shows %d places, want 3: %+v", len(places), places)
	}
	names := map[string]bool{}
	for _, p := range places {
		lat, err1 := strconv.ParseFloat(p.Latitude, 64)
		lng, err2 := strconv.ParseFloat(p.Longitude, 64)
		if p.Name == "" || names[p.Name] || err1 != nil || err2 != nil || lat == 0 && lng == 0 {
			t.Errorf("place %+v (of %+v): want distinct names and their locations", p, places)
		}
		names[p.Name] = true
	}
	var n int
	if b.evalJSON(`document.querySelectorAll("#pushes li").length`, &n); n != 0 {
		b.fatalf("%d pushes, want none", n)
	}

	// A worker pushes a Reply with id 0 to the page's connection, as
	// schemas/README.md says.
	real, err := proto.Marshal(&rpcpb.Reply{Body: []byte("from a worker ✓")})
	if err != nil {
		t.Fatal(err)
	}
	if a, err := nc.Request(schemas.WSPushSubject("udpgate", conn, schemas.WSPush), real, 5*time.Second); err != nil || a.Header.Get(schemas.HeaderWSError) != "" {
		b.fatalf("push: %v, %v", a, err)
	}
	b.wait("the push in the page", func() bool {
		return b.text("#pushes li") == "from a worker ✓"
	})

	// Messages that answer no call, handed to the page's handler as the
	// socket would hand them.
	push, err := proto.Marshal(&rpcpb.Reply{Body: []byte("pushed ✓")})
	if err != nil {
		t.Fatal(err)
	}
	for _, msg := range [][]byte{push, {0xff, 0xff, 0xff}} {
		js, _ := json.Marshal(msg) // base64
		b.evalJSON(`received(new MessageEvent("message", {data: Uint8Array.from(atob(`+string(js)+`), c => c.charCodeAt(0)).buffer}))`, nil)
		b.evalJSON(`received(new MessageEvent("message", {data: `+string(js)+`}))`, nil) // as text
	}
	type item struct{ Text, ID, Status, Error string }
	var pushes []item
	b.evalJSON(`Array.from(document.querySelectorAll("#pushes li"), li => ({Text: li.textContent, ID: li.dataset.id, Status: li.dataset.status, Error: li.dataset.error}))`, &pushes)
	ok := item{Text: "pushed ✓", ID: "0", Status: "STATUS_OK"}
	if len(pushes) != 5 || pushes[0] != (item{Text: "from a worker ✓", ID: "0", Status: "STATUS_OK"}) || pushes[1] != ok || pushes[2] != ok ||
		pushes[3].Text != "" || !strings.HasPrefix(pushes[3].Error, "not a Reply") ||
		pushes[4].Text != "" || !strings.HasPrefix(pushes[4].Error, "a text message, not") {
		b.fatalf("the pushes listed: %+v", pushes)
	}
	for _, w := range g.Stats().WS {
		if w.Accepted != 1 || w.RefusedOrigin != 0 || w.MessagesIn != 1 || w.Pushes != 1 {
			t.Errorf("ws stats %+v", w)
		}
	}
}

// wsPage serves testdata/ws-browser and, as schema.json, the protobufjs
// JSON of the envelope and the places service.
func wsPage(t *testing.T) http.Handler {
	t.Helper()
	schema, err := json.Marshal(protobufJSON(rpcpb.File_udpgate_rpc_v1_envelope_proto, placespb.File_udpgate_places_v1_places_proto))
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /", http.FileServer(http.Dir(filepath.Join("testdata", "ws-browser"))))
	mux.HandleFunc("GET /schema.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(schema)
	})
	return mux
}

// protobufJSON returns the messages and enums of files, and of the files
// they import, as protobufjs's JSON descriptor (protobuf.Root.fromJSON),
// so that the page's schema is the Go code's. Maps, oneofs and services
// are left out: the page needs none.
func protobufJSON(files ...protoreflect.FileDescriptor) map[string]any {
	root := map[string]any{}
	done := map[string]bool{}
	// nested returns the "nested" object of ns, made if need be.
	nested := func(ns map[string]any) map[string]any {
		n, ok := ns["nested"].(map[string]any)
		if !ok {
			n = map[string]any{}
			ns["nested"] = n
		}
		return n
	}
	// An enum's values keep their order: protobufjs takes the first as
	// the default, where a map would put them in alphabetical order.
	enum := func(e protoreflect.EnumDescriptor) map[string]any {
		var values bytes.Buffer
		for i := range e.Values().Len() {
			v := e.Values().Get(i)
			values.WriteString(",")
			values.WriteString(strconv.Quote(string(v.Name())))
			fmt.Fprintf(&values, ":%d", v.Number())
		}
		values.Bytes()[0] = '{'
		values.WriteString("}")
		return map[string]any{"values": json.RawMessage(values.Bytes())}
	}
	var message func(protoreflect.MessageDescriptor) map[string]any
	message = func(m protoreflect.MessageDescriptor) map[string]any {
		fields := map[string]any{}
		for i := range m.Fields().Len() {
			fd := m.Fields().Get(i)
			f := map[string]any{"id": int32(fd.Number()), "type": fd.Kind().String()}
			switch fd.Kind() {
			case protoreflect.MessageKind, protoreflect.GroupKind:
				f["type"] = "." + string(fd.Message().FullName())
			case protoreflect.EnumKind:
				f["type"] = "." + string(fd.Enum().FullName())
			}
			if fd.IsList() {
				f["rule"] = "repeated"
			}
			fields[string(fd.Name())] = f
		}
		out := map[string]any{"fields": fields}
		for i := range m.Messages().Len() {
			nested(out)[string(m.Messages().Get(i).Name())] = message(m.Messages().Get(i))
		}
		for i := range m.Enums().Len() {
			nested(out)[string(m.Enums().Get(i).Name())] = enum(m.Enums().Get(i))
		}
		return out
	}
	var add func(protoreflect.FileDescriptor)
	add = func(f protoreflect.FileDescriptor) {
		if done[f.Path()] {
			return
		}
		done[f.Path()] = true
		for i := range f.Imports().Len() {
			add(f.Imports().Get(i).FileDescriptor)
		}
		ns := root
		for _, part := range strings.Split(string(f.Package()), ".") {
			n, ok := nested(ns)[part].(map[string]any)
			if !ok {
				n = map[string]any{}
				nested(ns)[part] = n
			}
			ns = n
		}
		for i := range f.Messages().Len() {
			nested(ns)[string(f.Messages().Get(i).Name())] = message(f.Messages().Get(i))
		}
		for i := range f.Enums().Len() {
			nested(ns)[string(f.Enums().Get(i).Name())] = enum(f.Enums().Get(i))
		}
	}
	for _, f := range files {
		add(f)
	}
	return root
}

// chromium returns the path of a Chromium or Chrome binary; without one
// the test is skipped, but fails under CI.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if ci := os.Getenv("CI"); ci != "" && ci != "false" && ci != "0" {
		t.Fatal("CI is set and chromium is not installed (Debian: apt-get install -y chromium)")
	}
	t.Skip("chromium is not installed (Debian: apt-get install -y chromium); CI=true makes this a failure")
	return ""
}

// browser is headless Chromium with one page, driven over the DevTools
// protocol. It keeps what the page logs (console messages, uncaught
// exceptions, the browser's own log entries such as a refused WebSocket
// handshake) for the messages of a failing test. It is not safe for
// concurrent use.
type browser struct {
	t      *testing.T
	cdp    *websocket.Conn
	id     int      // the last command's id
	logged []string // what the page logged, in order
	thrown int      // how many of logged are uncaught exceptions
}

// browserWait bounds each wait and each DevTools command: long enough for
// Chromium on a busy two-core machine, short enough to fail rather than
// hang.
const browserWait = 30 * time.Second

// startBrowser starts Chromium on about:blank and connects to its page;
// t's cleanup kills it.
func startBrowser(t *testing.T, bin string) *browser {
	t.Helper()
	profile := t.TempDir()
	stderr := new(lockedBuffer)
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
		"--remote-allow-origins=*", "--user-data-dir="+profile, "about:blank")
	cmd.Stderr = stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its helpers go with it
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	// poll calls cond until it holds; a timeout or Chromium's exit fails
	// the test with Chromium's stderr.
	poll := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(browserWait)
		for !cond() {
			select {
			case <-exited:
				t.Fatalf("waiting for %s: chromium exited: %s", what, stderr)
			case <-time.After(20 * time.Millisecond):
			}
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; chromium's stderr:\n%s", what, stderr)
			}
		}
	}
	// Chromium writes the port it chose to DevToolsActivePort.
	var devtools int
	poll("Chromium's DevTools port", func() bool {
		b, err := os.ReadFile(filepath.Join(profile, "DevToolsActivePort"))
		if err != nil {
			return false
		}
		line, _, _ := strings.Cut(string(b), "\n")
		devtools, err = strconv.Atoi(strings.TrimSpace(line))
		return err == nil && devtools > 0
	})
	var page string
	poll("Chromium's page", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/json/list", devtools))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var targets []struct{ Type, WebSocketDebuggerURL string }
		if json.NewDecoder(resp.Body).Decode(&targets) != nil {
			return false
		}
		for _, tg := range targets {
			if tg.Type == "page" && tg.WebSocketDebuggerURL != "" {
				page = tg.WebSocketDebuggerURL
				return true
			}
		}
		return false
	})
	cdp, err := websocket.Dial(page, "", "http://127.0.0.1/")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cdp.Close() })
	b := &browser{t: t, cdp: cdp}
	for _, domain := range []string{"Runtime", "Log", "Page"} {
		if _, err := b.call(domain+".enable", nil); err != nil {
			t.Fatalf("DevTools: %v; chromium's stderr:\n%s", err, stderr)
		}
	}
	return b
}

// call sends a DevTools command and returns its result, keeping the
// events that come before it.
func (b *browser) call(method string, params map[string]any) (json.RawMessage, error) {
	b.id++
	if err := websocket.JSON.Send(b.cdp, map[string]any{"id": b.id, "method": method, "params": params}); err != nil {
		return nil, fmt.Errorf("%s: %w", method, err)
	}
	for {
		var msg struct {
			ID     int
			Method string // an event's
			Params json.RawMessage
			Result json.RawMessage
			Error  *struct{ Message string }
		}
		b.cdp.SetReadDeadline(time.Now().Add(browserWait))
		if err := websocket.JSON.Receive(b.cdp, &msg); err != nil {
			return nil, fmt.Errorf("%s: %w", method, err)
		}
		if msg.Method != "" {
			b.event(msg.Method, msg.Params)
			continue
		}
		if msg.ID != b.id {
			continue
		}
		if msg.Error != nil {
			return nil, fmt.Errorf("%s: %s", method, msg.Error.Message)
		}
		return msg.Result, nil
	}
}

// event keeps what the page logged.
func (b *browser) event(method string, params json.RawMessage) {
	switch method {
	case "Runtime.consoleAPICalled":
		var e struct {
			Type string
			Args []struct {
				Value       any
				Description string
			}
		}
		json.Unmarshal(params, &e)
		line := "console." + e.Type + ":"
		for _, a := range e.Args {
			if a.Description != "" {
				line += " " + a.Description
			} else {
				line += " " + fmt.Sprint(a.Value)
			}
		}
		b.logged = append(b.logged, line)
	case "Runtime.exceptionThrown":
		var e struct {
			ExceptionDetails struct {
				Text      string
				URL       string
				Line      int `json:"lineNumber"`
				Exception struct{ Description string }
			}
		}
		json.Unmarshal(params, &e)
		d := e.ExceptionDetails
		b.logged = append(b.logged, fmt.Sprintf("uncaught at %s:%d: %s %s", d.URL, d.Line+1, d.Text, d.Exception.Description))
		b.thrown++
	case "Log.entryAdded":
		var e struct {
			Entry struct{ Level, Source, Text, URL string }
		}
		json.Unmarshal(params, &e)
		b.logged = append(b.logged, fmt.Sprintf("log %s (%s): %s %s", e.Entry.Level, e.Entry.Source, e.Entry.Text, e.Entry.URL))
	}
}

// navigate loads url in the page.
func (b *browser) navigate(url string) {
	b.t.Helper()
	res, err := b.call("Page.navigate", map[string]any{"url": url})
	if err != nil {
		b.fatalf("DevTools: %v", err)
	}
	var r struct{ ErrorText string }
	json.Unmarshal(res, &r)
	if r.ErrorText != "" {
		b.fatalf("navigate to %s: %s", url, r.ErrorText)
	}
}

// evalJSON evaluates expr in the page and decodes its value into v.
func (b *browser) evalJSON(expr string, v any) {
	b.t.Helper()
	res, err := b.call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true})
	if err != nil {
		b.fatalf("DevTools: %v", err)
	}
	var r struct {
		Result           struct{ Value json.RawMessage }
		ExceptionDetails *struct {
			Text      string
			Exception struct{ Description string }
		}
	}
	if err := json.Unmarshal(res, &r); err != nil {
		b.fatalf("DevTools: %v", err)
	}
	if r.ExceptionDetails != nil {
		b.fatalf("%s: %s %s", expr, r.ExceptionDetails.Text, r.ExceptionDetails.Exception.Description)
	}
	if v == nil || len(r.Result.Value) == 0 {
		return // undefined
	}
	if err := json.Unmarshal(r.Result.Value, v); err != nil {
		b.fatalf("%s is %s: %v", expr, r.Result.Value, err)
	}
}

// text returns the text of the element sel selects, "" if none.
func (b *browser) text(sel string) string {
	b.t.Helper()
	var s string
	b.evalJSON(`(document.querySelector(`+strconv.Quote(sel)+`) || {}).textContent || ""`, &s)
	return s
}

// wait polls cond until it holds; after browserWait, or an uncaught
// exception in the page, it fails the test with the page's DOM and log.
func (b *browser) wait(what string, cond func() bool) {
	b.t.Helper()
	deadline := time.Now().Add(browserWait)
	for !cond() {
		if b.thrown > 0 {
			b.fatalf("waiting for %s: the page threw", what)
		}
		if time.Now().After(deadline) {
			b.fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// fatalf fails the test with the page's DOM and what it logged.
func (b *browser) fatalf(format string, args ...any) {
	b.t.Helper()
	dom := "(not read: %v)"
	if res, err := b.call("Runtime.evaluate", map[string]any{"expression": "document.documentElement.outerHTML", "returnByValue": true}); err != nil {
		dom = fmt.Sprintf(dom, err)
	} else {
		var r struct{ Result struct{ Value string } }
		json.Unmarshal(res, &r)
		dom = r.Result.Value
	}
	b.t.Fatalf(format+"\nthe page's DOM:\n%s\nthe page's log:\n%s", append(args, dom, strings.Join(b.logged, "\n"))...)
}

// lockedBuffer is a bytes.Buffer safe for a process's writes and the
// test's reads.
type lockedBuffer struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
