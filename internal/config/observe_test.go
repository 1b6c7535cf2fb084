package config

import (
	"strings"
	"testing"
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
