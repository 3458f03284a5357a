// Command registry-client finds the nodes of a service in the Rust examples' registry and
// calls them in turn with grpc-go, as the round-robin example's client does: the same
// bucket, the same keys, the same expiry rule, the same order.
//
//	registry-client -nats nats://127.0.0.1:4222 -service greeter -calls 6
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"

	"microkit/interop/greeterpb"
	"microkit/interop/registry"
)

func main() {
	url := flag.String("nats", envOr("NATS_URL", nats.DefaultURL), "the NATS server the registry lives on")
	service := flag.String("service", "greeter", "the service to call")
	calls := flag.Int("calls", 6, "how many calls to make")
	deadline := flag.Duration("deadline", 5*time.Second, "each call's deadline")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("registry-client: ")
	if err := run(*url, *service, *calls, *deadline); err != nil {
		log.Fatal(err)
	}
}

func run(url, service string, calls int, deadline time.Duration) error {
	nc, err := nats.Connect(url)
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", url, err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		return err
	}
	kv, err := registry.Open(js)
	if err != nil {
		return err
	}
	nodes, err := registry.Nodes(js, kv, service)
	if err != nil {
		return err
	}
	if len(nodes) == 0 {
		return fmt.Errorf("no node of service %q in the registry", service)
	}
	ids := make([]string, len(nodes))
	for i, node := range nodes {
		ids[i] = node.ID
	}
	fmt.Printf("nodes of %s: %s\n", service, strings.Join(ids, ", "))

	conns := map[string]*grpc.ClientConn{}
	defer func() {
		for _, conn := range conns {
			conn.Close()
		}
	}()
	for n := 0; n < calls; n++ {
		node := nodes[n%len(nodes)]
		conn, ok := conns[node.ID]
		if !ok {
			// The registry holds host:port; the connection is plain HTTP/2 (no TLS).
			conn, err = grpc.Dial(node.Address, grpc.WithInsecure())
			if err != nil {
				return err
			}
			conns[node.ID] = conn
		}
		ctx, cancel := context.WithTimeout(context.Background(), deadline)
		reply, err := greeterpb.NewGreeterClient(conn).SayHello(ctx, &greeterpb.HelloRequest{Name: "gopher"})
		cancel()
		if err != nil {
			return fmt.Errorf("call %d to %s at %s: %w", n+1, node.ID, node.Address, err)
		}
		if reply.GetNode() != node.ID {
			return fmt.Errorf("call %d: %s answered for %s", n+1, reply.GetNode(), node.ID)
		}
		fmt.Printf("call %d: %s from %s\n", n+1, reply.GetMessage(), reply.GetNode())
	}
	return nil
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
