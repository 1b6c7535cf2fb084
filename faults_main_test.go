package main

import (
	"os"
	"testing"
)

// TestMain runs the package's tests, unless the test binary was started as
// a child NATS server of the fault suite (os.Executable is the test binary
// under go test): then it is udpgate, and main runs it.
func TestMain(m *testing.M) {
	if isFaultNode(os.Args[1:]) {
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}
