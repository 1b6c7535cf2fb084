package config

import (
	"strings"
	"testing"

	"github.com/udpgate/udpgate/workers"
)

func TestConfigListenerMaxPending(t *testing.T) {
	tests := []struct {
		name, max, value string
		want             int
		bad              string // part of the error; "" for none
	}{
		{name: "default", max: "65536", value: "0", want: 0},
		{name: "number", max: "65536", value: "1000", want: 1000},
		{name: "percentage", max: "65536", value: "25%", want: 16384},
		{name: "all", max: "65536", value: "100%", want: 65536},
		{name: "percentage of a small table rounds to one", max: "10", value: "1%", want: 1},
		{name: "above the table", max: "64", value: "65", bad: "UDPGATE_LISTENER_MAX_PENDING: 65 is above UDPGATE_MAX_PENDING 64"},
		{name: "over 100%", max: "64", value: "150%", bad: `UDPGATE_LISTENER_MAX_PENDING: "150%" is not a percentage`},
		{name: "zero percent", max: "64", value: "0%", bad: `UDPGATE_LISTENER_MAX_PENDING: "0%" is not a percentage`},
		{name: "negative", max: "64", value: "-1", bad: `UDPGATE_LISTENER_MAX_PENDING: "-1" is not a number`},
		{name: "word", max: "64", value: "half", bad: `UDPGATE_LISTENER_MAX_PENDING: "half" is not a number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := defaults(t)
			e.MaxPending, e.ListenerMaxPending = tt.max, tt.value
			c, ok := parseWant(t, e, tt.bad)
			if !ok {
				return
			}
			if c.ListenerMaxPending != tt.want {
				t.Errorf("ListenerMaxPending %d, want %d", c.ListenerMaxPending, tt.want)
			}
		})
	}
}

func TestConfigStreamPersist(t *testing.T) {
	tests := []struct {
		name, persist, storage, replicas string
		async                            bool
		bad                              string // part of the error; "" for none
	}{
		{name: "default", persist: "sync", storage: "file", replicas: "1"},
		{name: "async", persist: "async", storage: "file", replicas: "1", async: true},
		{name: "word", persist: "later", storage: "file", replicas: "1", bad: `UDPGATE_STREAM_PERSIST: "later" is not sync or async`},
		{name: "async on memory", persist: "async", storage: "memory", replicas: "1", bad: "UDPGATE_STREAM_PERSIST: async needs UDPGATE_STREAM_STORAGE=file"},
		{name: "async replicated", persist: "async", storage: "file", replicas: "3", bad: "UDPGATE_STREAM_PERSIST: async needs UDPGATE_STREAM_REPLICAS=1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := defaults(t)
			e.StreamPersist, e.StreamStorage, e.StreamReplicas = tt.persist, tt.storage, tt.replicas
			c, ok := parseWant(t, e, tt.bad)
			if !ok {
				return
			}
			if c.StreamAsync != tt.async {
				t.Errorf("StreamAsync %v, want %v", c.StreamAsync, tt.async)
			}
		})
	}
}

// parseWant parses e and checks its error against bad, a part of the
// error expected ("" for none). It reports whether parsing succeeded.
func parseWant(t *testing.T, e env, bad string) (Config, bool) {
	t.Helper()
	c, err := e.parse(nil)
	if bad != "" {
		if err == nil || !strings.Contains(err.Error(), bad) {
			t.Fatalf("error %v, want one with %q", err, bad)
		}
		return Config{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	return c, true
}

func TestConfigDelivery(t *testing.T) {
	tests := []struct {
		name, delivery, backlog string
		want                    workers.Delivery
		bad                     string // part of the error; "" for none
	}{
		{name: "default", delivery: "direct", backlog: "1024", want: workers.Direct},
		{name: "durable", delivery: "durable", backlog: "1024", want: workers.Durable},
		{name: "word", delivery: "pull", backlog: "1024", bad: `UDPGATE_DELIVERY: "pull" is not direct or durable`},
		{name: "no backlog", delivery: "direct", backlog: "0", bad: "UDPGATE_WORKER_BACKLOG: 0 is outside 1..1048576"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := defaults(t)
			e.Delivery, e.WorkerBacklog = tt.delivery, tt.backlog
			c, ok := parseWant(t, e, tt.bad)
			if !ok {
				return
			}
			if c.Delivery != tt.want {
				t.Errorf("Delivery %v, want %v", c.Delivery, tt.want)
			}
		})
	}
}
