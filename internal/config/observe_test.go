package config

import (
	"strings"
	"testing"
	"time"
)

func TestCoAPObserveVariables(t *testing.T) {
	c, err := defaults(t).parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.CoAPObserveCONEvery != 20 || c.CoAPMaxObservers != 10000 || c.CoAPMaxObserversPeer != 64 {
		t.Errorf("defaults: CON every %d, observers %d, per peer %d", c.CoAPObserveCONEvery, c.CoAPMaxObservers, c.CoAPMaxObserversPeer)
	}
	e := defaults(t)
	e.CoAPObserveCONEvery, e.CoAPMaxObservers, e.CoAPMaxObserversPeer = "0", "many", "-1"
	_, err = e.parse(nil)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"UDPGATE_COAP_OBSERVE_CON_EVERY:", "UDPGATE_COAP_MAX_OBSERVERS:", "UDPGATE_COAP_MAX_OBSERVERS_PER_PEER:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%s", want, err)
		}
	}
}

func TestObserveBucketVariables(t *testing.T) {
	e := defaults(t)
	e.StreamReplicas = "3"
	c, err := e.parse(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.ObserveBucket != "udpgate_observe" || c.ObserveReplicas != 3 || c.ObserveTTL != time.Hour {
		t.Errorf("defaults: bucket %q, replicas %d (want UDPGATE_STREAM_REPLICAS's), TTL %s", c.ObserveBucket, c.ObserveReplicas, c.ObserveTTL)
	}
	e = defaults(t)
	e.ObserveBucket, e.ObserveReplicas, e.ObserveTTL = "off", "1", "10m"
	if c, err = e.parse(nil); err != nil || c.ObserveBucket != "" || c.ObserveReplicas != 1 || c.ObserveTTL != 10*time.Minute {
		t.Errorf("off: bucket %q, replicas %d, TTL %s, %v", c.ObserveBucket, c.ObserveReplicas, c.ObserveTTL, err)
	}
	e = defaults(t)
	e.ObserveBucket, e.ObserveReplicas, e.ObserveTTL = "a.b", "6", "1s"
	_, err = e.parse(nil)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"UDPGATE_OBSERVE_BUCKET:", "UDPGATE_OBSERVE_REPLICAS:", "UDPGATE_OBSERVE_TTL:"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%s", want, err)
		}
	}
}
