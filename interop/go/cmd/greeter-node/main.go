// Command greeter-node is a Greeter written with grpc-go that joins the Rust examples'
// registry: it registers itself in the NATS bucket with a TTL and keeps the key alive with
// heartbeats, so the round-robin example's client takes turns over Rust and Go nodes alike.
// It serves grpc.health.v1 too: that client sends work only to nodes that report SERVING.
//
//	greeter-node -nats nats://127.0.0.1:4222 -id greeter-go -ttl 1s
//
// SIGTERM, SIGINT or SIGHUP stops it as the Rust servers stop: NOT_SERVING first, then out
// of the registry, then the calls in flight drained; a second signal exits at once.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	"microkit/interop/greeterpb"
	"microkit/interop/registry"
)

func main() {
	url := flag.String("nats", envOr("NATS_URL", nats.DefaultURL), "the NATS server the registry lives on")
	id := flag.String("id", "greeter-go", "this node's id in the registry, and the node its replies name")
	service := flag.String("service", "greeter", "the service to register under")
	ttl := flag.Duration("ttl", time.Second, "the node's time to live in the registry; heartbeats come every third of it")
	listen := flag.String("listen", "127.0.0.1:0", "where to serve gRPC")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("greeter-node: ")

	if err := run(*url, *id, *service, *listen, *ttl); err != nil {
		log.Fatal(err)
	}
}

func run(url, id, service, listen string, ttl time.Duration) error {
	// Armed before the ready line: a signal after it is a stop request, not a kill.
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)

	nc, err := nats.Connect(url, nats.Name(id))
	if err != nil {
		return fmt.Errorf("connecting to %s (start one with nats-server -js): %w", url, err)
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

	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	greeter := &greeter{node: id}
	server := grpc.NewServer()
	greeterpb.RegisterGreeterServer(server, greeter)
	healthServer := health.NewServer() // "" reports SERVING from the start
	healthServer.SetServingStatus("greeter.v1.Greeter", healthpb.HealthCheckResponse_SERVING)
	healthpb.RegisterHealthServer(server, healthServer)
	reflection.Register(server)
	served := make(chan error, 1)
	go func() { served <- server.Serve(lis) }()

	node := registry.Node{Service: service, ID: id, Address: lis.Addr().String(), Metadata: map[string]string{"language": "go"}}
	lease, err := registry.Start(kv, node, ttl, log.Printf)
	if err != nil {
		server.Stop()
		return fmt.Errorf("registering %s: %w", id, err)
	}
	fmt.Printf("%s serving %s on %s, registered with a TTL of %v\n", id, service, node.Address, ttl)

	select {
	case sig := <-signals:
		log.Printf("%v: reporting NOT_SERVING, deregistering, then draining", sig)
	case err := <-served:
		_ = lease.Stop()
		return err
	}
	go func() {
		<-signals
		log.Print("second signal: exiting at once")
		os.Exit(1)
	}()
	// Clients following health stop sending work before the node leaves the registry.
	healthServer.Shutdown()
	if err := lease.Stop(); err != nil {
		log.Printf("deregistering %s: %v", id, err)
	}
	drained := make(chan struct{})
	go func() { server.GracefulStop(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		server.Stop() // the drain deadline: cut what is still running
	}
	fmt.Printf("%s deregistered and stopped after %d calls\n", id, atomic.LoadUint64(&greeter.calls))
	return nil
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
