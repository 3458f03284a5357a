// Command nats-service is an instance of the transport example's service, written with
// nats.go's micro package: it joins the queue group on transport-greeter.SayHello beside
// the Rust instances and answers $SRV.PING, $SRV.INFO and $SRV.STATS, so the Rust client
// finds it and the queue group hands it a share of the calls.
//
//	nats-service -nats nats://127.0.0.1:4222 -node go-1
//
// Debian 12's nats.go (1.22) has the micro package's preview, which speaks an older dialect
// of the service protocol: no "type" in its answers, one endpoint per service ("subject" in
// INFO), STATS as one flat object, no metadata; and the id is always a fresh random one. So
// the node that answered travels in the reply itself (HelloReply.node), as with the Rust
// instances.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"google.golang.org/protobuf/proto"

	"microkit/interop/greeterpb"
)

const (
	service = "transport-greeter"
	version = "1.0.0"
	subject = service + ".SayHello"
)

func main() {
	url := flag.String("nats", envOr("NATS_URL", nats.DefaultURL), "the NATS server")
	node := flag.String("node", "go-1", "the node this instance names in its replies")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("nats-service: ")
	if err := run(*url, *node); err != nil {
		log.Fatal(err)
	}
}

func run(url, node string) error {
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	closed := make(chan struct{})
	nc, err := nats.Connect(url, nats.Name(node), nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		return fmt.Errorf("connecting to %s: %w", url, err)
	}
	var served uint64
	svc, err := micro.AddService(nc, micro.Config{
		Name:        service,
		Version:     version,
		Description: "SayHello, from Go",
		Endpoint: micro.Endpoint{
			Subject: subject,
			Handler: func(req *micro.Request) {
				atomic.AddUint64(&served, 1)
				answer(req, node)
			},
		},
	})
	if err != nil {
		return err
	}
	// Once the server has answered a round trip it knows our subscriptions: a call made
	// after the ready line can reach us.
	if err := nc.Flush(); err != nil {
		return err
	}
	fmt.Printf("%s: serving SayHello as NATS service %s %s (id %s)\n", node, service, version, svc.Info().ID)

	sig := <-signals
	go func() {
		<-signals
		os.Exit(1)
	}()
	log.Printf("%v: leaving the queue group, answering what was already delivered", sig)
	// Stop drains the service's subscriptions; draining the connection then waits for the
	// requests already delivered to be answered before it closes.
	if err := svc.Stop(); err != nil {
		log.Printf("stopping: %v", err)
	}
	if err := nc.Drain(); err != nil {
		return err
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		log.Print("the drain did not finish within 5s")
	}
	fmt.Printf("%s: stopped: %d calls served\n", node, atomic.LoadUint64(&served))
	return nil
}

// answer is the handler: the same protobuf payload the Rust instances take, and a refusal
// as the protocol's error headers (Nats-Service-Error-Code, Nats-Service-Error).
func answer(req *micro.Request, node string) {
	var hello greeterpb.HelloRequest
	if err := proto.Unmarshal(req.Data(), &hello); err != nil {
		_ = req.Error("400", "not a HelloRequest: "+err.Error(), nil)
		return
	}
	if strings.TrimSpace(hello.GetName()) == "" {
		_ = req.Error("400", "name is empty", nil)
		return
	}
	reply, err := proto.Marshal(&greeterpb.HelloReply{Message: "hello " + hello.GetName(), Node: node})
	if err != nil {
		_ = req.Error("500", err.Error(), nil)
		return
	}
	_ = req.Respond(reply)
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
