// Command udpgate is a UDP API gateway on NATS JetStream: clients send
// datagrams to real ports, workers answer them through NATS, and the reply
// leaves from the address and port the request was sent to.
//
// The commands live in internal/cli; `udpgate help` lists them.
package main

import (
	"os"

	"github.com/udpgate/udpgate/internal/cli"
)

func main() {
	os.Exit(cli.Main())
}
