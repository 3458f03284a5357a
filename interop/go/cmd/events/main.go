// Command events publishes and subscribes to the pubsub example's typed events with
// nats.go: the same topics (plain NATS subjects), the same protobuf messages, the same
// event-type header that tells a subscriber what it is about to decode.
//
//	events -nats nats://127.0.0.1:4222 publish -users 3 -orders 2
//	events -nats nats://127.0.0.1:4222 subscribe -service mailer -max-events 3
//	events -nats nats://127.0.0.1:4222 subscribe -service billing   # queue group "billing"
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"microkit/interop/eventspb"
)

// Each topic carries one event type, named in the event-type header.
const (
	signedUpTopic = "user.signed_up"
	signedUpType  = "events.v1.UserSignedUp"
	orderTopic    = "order.placed"
	orderType     = "events.v1.OrderPlaced"
	billingQueue  = "billing"
)

func main() {
	url := flag.String("nats", envOr("NATS_URL", nats.DefaultURL), "the NATS server")
	flag.Usage = func() {
		fmt.Fprintln(flag.CommandLine.Output(), "usage: events [-nats URL] publish|subscribe [flags]")
		flag.PrintDefaults()
	}
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("events: ")
	if flag.NArg() < 1 {
		flag.Usage()
		os.Exit(2)
	}
	closed := make(chan struct{})
	nc, err := nats.Connect(*url, nats.ClosedHandler(func(*nats.Conn) { close(closed) }))
	if err != nil {
		log.Fatalf("connecting to %s: %v", *url, err)
	}
	switch flag.Arg(0) {
	case "publish":
		err = publish(nc, flag.Args()[1:])
	case "subscribe":
		err = subscribe(nc, closed, flag.Args()[1:])
	default:
		flag.Usage()
		os.Exit(2)
	}
	if err != nil {
		log.Fatal(err)
	}
}

func publish(nc *nats.Conn, args []string) error {
	flags := flag.NewFlagSet("publish", flag.ExitOnError)
	users := flags.Int("users", 3, "UserSignedUp events to publish")
	orders := flags.Int("orders", 2, "OrderPlaced events to publish")
	_ = flags.Parse(args)
	defer nc.Close()
	for n := 1; n <= *users; n++ {
		id := fmt.Sprintf("gopher-%d", n)
		event := &eventspb.UserSignedUp{UserId: id, Email: id + "@example.com"}
		if err := send(nc, signedUpTopic, signedUpType, event); err != nil {
			return err
		}
	}
	for n := 1; n <= *orders; n++ {
		event := &eventspb.OrderPlaced{OrderId: fmt.Sprintf("go-order-%d", n), UserId: "gopher-1", AmountCents: uint64(500 * n)}
		if err := send(nc, orderTopic, orderType, event); err != nil {
			return err
		}
	}
	// Publishing only buffers: a round trip to the server makes sure it has them all.
	if err := nc.Flush(); err != nil {
		return err
	}
	fmt.Printf("published %d UserSignedUp and %d OrderPlaced\n", *users, *orders)
	return nil
}

func send(nc *nats.Conn, topic, kind string, event proto.Message) error {
	data, err := proto.Marshal(event)
	if err != nil {
		return err
	}
	msg := nats.NewMsg(topic)
	// Header names are case-sensitive on NATS: "event-type", as the Rust side spells it.
	msg.Header.Set("content-type", "application/protobuf")
	msg.Header.Set("event-type", kind)
	msg.Data = data
	return nc.PublishMsg(msg)
}

// tally counts what a subscriber saw; nats.go calls a subscription's handler for one
// message at a time, so only the wait for "enough" needs care.
type tally struct {
	handled, undecodable, max int
	enough                    chan struct{}
}

func subscribe(nc *nats.Conn, closed <-chan struct{}, args []string) error {
	flags := flag.NewFlagSet("subscribe", flag.ExitOnError)
	service := flags.String("service", "mailer", "mailer or analytics (every sign-up), billing (a share of the orders)")
	maxEvents := flags.Int("max-events", 0, "stop after this many events (0: until stopped)")
	_ = flags.Parse(args)

	// Armed before the ready line: a signal after it is a stop request, not a kill.
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	t := &tally{max: *maxEvents, enough: make(chan struct{})}
	var err error
	switch *service {
	case "mailer", "analytics":
		_, err = nc.Subscribe(signedUpTopic, t.handler(*service, signedUpType, func(data []byte) (string, error) {
			var event eventspb.UserSignedUp
			err := proto.Unmarshal(data, &event)
			return event.GetUserId(), err
		}))
	case "billing":
		_, err = nc.QueueSubscribe(orderTopic, billingQueue, t.handler(*service, orderType, func(data []byte) (string, error) {
			var event eventspb.OrderPlaced
			err := proto.Unmarshal(data, &event)
			return fmt.Sprintf("%s %d", event.GetOrderId(), event.GetAmountCents()), err
		}))
	default:
		return fmt.Errorf("no service %q: mailer, analytics or billing", *service)
	}
	if err != nil {
		return err
	}
	// A publish made after the ready line must reach us: the server has our subscription
	// once it answered this round trip.
	if err := nc.Flush(); err != nil {
		return err
	}
	fmt.Printf("%s: listening\n", *service)

	select {
	case <-t.enough:
	case sig := <-signals:
		log.Printf("%v: stopping, handling what already arrived", sig)
		go func() {
			<-signals
			os.Exit(1)
		}()
	}
	// Drain: no new messages, those already here handled, then the connection closes.
	if err := nc.Drain(); err != nil {
		return err
	}
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
		return fmt.Errorf("the drain did not finish within 5s")
	}
	fmt.Printf("%s: %d handled, %d undecodable skipped\n", *service, t.handled, t.undecodable)
	return nil
}

// handler decodes what arrives on a topic as its one event type, and refuses, before
// decoding, a message whose event-type header names another: protobuf decodes almost any
// bytes into something, so the header is what tells an event from a stranger.
func (t *tally) handler(service, kind string, decode func([]byte) (string, error)) nats.MsgHandler {
	return func(msg *nats.Msg) {
		if got := msg.Header.Get("event-type"); got != kind {
			t.undecodable++
			log.Printf("%s: skipped a payload with event-type %q, not %s", service, got, kind)
			return
		}
		shown, err := decode(msg.Data)
		if err != nil {
			t.undecodable++
			log.Printf("%s: skipped a payload that is no %s: %v", service, kind, err)
			return
		}
		t.handled++
		fmt.Printf("%s: %s\n", service, shown)
		if t.handled == t.max {
			close(t.enough)
		}
	}
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}
