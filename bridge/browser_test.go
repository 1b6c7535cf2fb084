//go:build unix

package bridge

import (
	"bytes"
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/netip"
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
)

// page is what the browser loads: it leases a port with fetch, opens an
// EventSource on the binding (the token as access_token: EventSource
// cannot send headers) and lists each datagram's payload, decoded as
// UTF-8, in #log.
var page = template.Must(template.New("page").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>udpgate bridge</title></head>
<body>
<p>binding <span id="id"></span> on <span id="addr"></span>: <span id="state">binding</span></p>
<ul id="log"></ul>
<script>
const token = {{.}};
const state = document.getElementById("state");
(async () => {
  try {
    const r = await fetch("/v1/udp/bind", {
      method: "POST",
      headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
      body: JSON.stringify({port: 0, lease_secs: 60}),
    });
    const b = await r.json();
    if (!r.ok) { state.textContent = "refused: " + b.error; return; }
    document.getElementById("id").textContent = b.id;
    document.getElementById("addr").textContent = b.local_addr;
    const es = new EventSource("/v1/udp/recv/" + b.id + "?access_token=" + encodeURIComponent(token));
    es.onopen = () => { state.textContent = "open"; };
    es.onerror = () => { if (state.textContent === "open") state.textContent = "error"; };
    es.addEventListener("datagram", ev => {
      const d = JSON.parse(ev.data);
      const li = document.createElement("li");
      li.textContent = new TextDecoder().decode(Uint8Array.from(atob(d.payload), c => c.charCodeAt(0)));
      li.dataset.src = d.src;
      document.getElementById("log").appendChild(li);
    });
    es.addEventListener("closed", ev => {
      es.close();
      state.textContent = "closed: " + JSON.parse(ev.data).reason;
    });
  } catch (e) {
    state.textContent = "failed: " + e;
  }
})();
</script>
</body></html>
`))

// chromium returns the path of a Chromium or Chrome binary; without one
// the test is skipped, but fails under CI.
func chromium(t *testing.T) string {
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

// TestBrowserEventSource: headless Chromium loads a page that leases a
// port and opens an EventSource on it; the datagrams the test sends to
// the port appear in the page's DOM, read over the DevTools protocol,
// and deleting the binding closes the page's stream.
func TestBrowserEventSource(t *testing.T) {
	bin := chromium(t)
	e := newEnv(t, nil, true)
	e.obs.Handle("GET /bridge-test/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		page.Execute(w, testToken)
	}))

	profile := t.TempDir()
	var stderr syncBuffer
	cmd := exec.Command(bin, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
		"--remote-allow-origins=*", "--user-data-dir="+profile, e.url+"/bridge-test/")
	cmd.Stderr = &stderr
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

	// Chromium writes the port it chose to DevToolsActivePort.
	var devtools int
	waitFor(t, "Chromium's DevTools port", func() bool {
		select {
		case <-exited:
			t.Fatalf("chromium exited: %s", stderr.String())
		default:
		}
		b, err := os.ReadFile(filepath.Join(profile, "DevToolsActivePort"))
		if err != nil {
			return false
		}
		line, _, _ := strings.Cut(string(b), "\n")
		devtools, err = strconv.Atoi(strings.TrimSpace(line))
		return err == nil && devtools > 0
	})
	var ws string
	waitFor(t, "the page's target", func() bool {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/json/list", devtools))
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var targets []struct{ Type, URL, WebSocketDebuggerURL string }
		if json.NewDecoder(resp.Body).Decode(&targets) != nil {
			return false
		}
		for _, tg := range targets {
			if tg.Type == "page" && strings.HasPrefix(tg.URL, e.url+"/bridge-test/") && tg.WebSocketDebuggerURL != "" {
				ws = tg.WebSocketDebuggerURL
				return true
			}
		}
		return false
	})
	cdp, err := websocket.Dial(ws, "", "http://127.0.0.1/")
	if err != nil {
		t.Fatal(err)
	}
	defer cdp.Close()
	id := 0
	// eval evaluates expr in the page and returns its value as a string.
	eval := func(expr string) string {
		t.Helper()
		id++
		req := map[string]any{"id": id, "method": "Runtime.evaluate", "params": map[string]any{"expression": expr, "returnByValue": true}}
		if err := websocket.JSON.Send(cdp, req); err != nil {
			t.Fatalf("DevTools: %v", err)
		}
		for {
			var resp struct {
				ID     int
				Result struct {
					Result struct{ Value any }
				}
				Error *struct{ Message string }
			}
			cdp.SetReadDeadline(time.Now().Add(30 * time.Second))
			if err := websocket.JSON.Receive(cdp, &resp); err != nil {
				t.Fatalf("DevTools: %v", err)
			}
			if resp.ID != id {
				continue // an event
			}
			if resp.Error != nil {
				t.Fatalf("DevTools: %s", resp.Error.Message)
			}
			s, _ := resp.Result.Result.Value.(string)
			return s
		}
	}
	text := func(sel string) string {
		return eval(`(document.querySelector(` + strconv.Quote(sel) + `) || {}).textContent || ""`)
	}

	waitFor(t, "the page's EventSource open", func() bool {
		s := text("#state")
		if strings.HasPrefix(s, "refused") || strings.HasPrefix(s, "failed") || s == "error" {
			t.Fatalf("the page says %q", s)
		}
		return s == "open"
	})
	st := e.b.Status()
	if len(st.Bindings) != 1 || st.Bindings[0].Readers != 1 || st.Bindings[0].LocalAddr != text("#addr") {
		t.Fatalf("status %+v; the page shows %q", st, text("#addr"))
	}
	client := dial(t, netip.MustParseAddrPort(st.Bindings[0].LocalAddr).Port())
	want := []string{"first datagram", "zweites Datagramm ✓", "<b>not markup</b>"}
	for _, m := range want {
		if _, err := client.Write([]byte(m)); err != nil {
			t.Fatal(err)
		}
	}
	list := `Array.from(document.querySelectorAll("#log li")).map(li => li.textContent + " from " + li.dataset.src).join("\n")`
	var shown string
	waitFor(t, "the datagrams in the page", func() bool {
		shown = eval(list)
		return strings.Count(shown, "\n") >= len(want)-1 && shown != ""
	})
	var lines []string
	for _, m := range want {
		lines = append(lines, m+" from "+client.LocalAddr().String())
	}
	if shown != strings.Join(lines, "\n") {
		t.Errorf("the page shows\n%s\nwant\n%s", shown, strings.Join(lines, "\n"))
	}
	if n := eval(`String(document.querySelectorAll("#log b").length)`); n != "0" {
		t.Errorf("a payload became markup: %s <b> elements", n)
	}

	if code, body := e.do(t, "DELETE", "/v1/udp/bind/"+st.Bindings[0].ID, testToken, nil); code != 200 {
		t.Fatalf("delete: %d %s", code, body)
	}
	waitFor(t, "the page's stream closed", func() bool { return text("#state") == "closed: deleted" })
}

// syncBuffer is a bytes.Buffer safe for a process's writes and the
// test's reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
