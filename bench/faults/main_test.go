package faults

import (
	"context"
	"fmt"
	"os"
	"testing"
)

// TestMain runs the package's tests, unless the test binary was started as
// a child NATS server of the fault suite (os.Executable is the test binary
// under go test): then it runs that server, as udpgate would.
func TestMain(m *testing.M) {
	if spec, ok := NodeSpec(os.Args[1:]); ok {
		if err := RunNode(context.Background(), spec, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
