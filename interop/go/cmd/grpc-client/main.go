// Command grpc-client is a grpc-go client of the Rust examples' servers, with stubs that
// protoc-gen-go and protoc-gen-go-grpc generated from the same .proto files the Rust side
// compiles.
//
//	grpc-client -addr 127.0.0.1:50051 node    # a Greeter node: every call shape, health, reflection
//	grpc-client -addr 127.0.0.1:9090 proxy    # the proxy example: both its services, and refusals
//
// Every call carries a deadline, which grpc-go sends as the grpc-timeout header.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"microkit/interop/greeterpb"
)

// patience is each call's deadline where the call is not about deadlines.
const patience = 10 * time.Second

func main() {
	addr := flag.String("addr", "127.0.0.1:9090", "host:port of the server")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: grpc-client -addr host:port node|proxy\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("grpc-client: ")
	if flag.NArg() != 1 {
		flag.Usage()
		os.Exit(2)
	}
	// The examples serve plain HTTP/2 on loopback (the secure example is the one with TLS).
	conn, err := grpc.Dial(*addr, grpc.WithInsecure())
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	switch flag.Arg(0) {
	case "node":
		err = node(conn)
	case "proxy":
		err = proxy(conn)
	default:
		flag.Usage()
		os.Exit(2)
	}
	if err != nil {
		log.Fatal(err)
	}
}

// node calls a Greeter node directly: the four call shapes, a deadline that runs out,
// health, and reflection (listing, then a call built from reflected descriptors alone).
func node(conn *grpc.ClientConn) error {
	greeter := greeterpb.NewGreeterClient(conn)
	if err := everyShape(greeter, ""); err != nil {
		return err
	}
	if err := deadlineRunsOut(greeter, ""); err != nil {
		return err
	}
	if err := checkHealth(conn); err != nil {
		return err
	}
	return reflect(conn)
}

// everyShape makes one call of each shape and prints what came back.
func everyShape(greeter greeterpb.GreeterClient, prefix string) error {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()

	reply, err := greeter.SayHello(ctx, &greeterpb.HelloRequest{Name: "gopher"})
	if err != nil {
		return fmt.Errorf("SayHello: %w", err)
	}
	fmt.Printf("%sSayHello: %s from %s\n", prefix, reply.GetMessage(), reply.GetNode())

	// Server streaming: read until io.EOF, the server's OK status.
	greetings, err := greeter.Greetings(ctx, &greeterpb.GreetingsRequest{Name: "gopher", Count: 3})
	if err != nil {
		return fmt.Errorf("Greetings: %w", err)
	}
	var seqs []string
	var from string
	for {
		reply, err := greetings.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("Greetings: %w", err)
		}
		seqs = append(seqs, fmt.Sprint(reply.GetSeq()))
		from = reply.GetNode()
	}
	fmt.Printf("%sGreetings: %s from %s\n", prefix, strings.Join(seqs, " "), from)

	// Client streaming: the summary comes once we half-close (CloseAndRecv).
	collect, err := greeter.CollectNames(ctx)
	if err != nil {
		return fmt.Errorf("CollectNames: %w", err)
	}
	for _, name := range []string{"ada", "grace"} {
		if err := collect.Send(&greeterpb.HelloRequest{Name: name}); err != nil {
			return fmt.Errorf("CollectNames: %w", err)
		}
	}
	summary, err := collect.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("CollectNames: %w", err)
	}
	fmt.Printf("%sCollectNames: %d names: %s\n", prefix, summary.GetCount(), summary.GetMessage())

	// Bidirectional: one reply per request, each read before the next is sent.
	chat, err := greeter.Chat(ctx)
	if err != nil {
		return fmt.Errorf("Chat: %w", err)
	}
	var said []string
	for _, name := range []string{"ken", "rob"} {
		if err := chat.Send(&greeterpb.HelloRequest{Name: name}); err != nil {
			return fmt.Errorf("Chat: %w", err)
		}
		reply, err := chat.Recv()
		if err != nil {
			return fmt.Errorf("Chat: %w", err)
		}
		said = append(said, fmt.Sprintf("%s (%d)", reply.GetMessage(), reply.GetSeq()))
	}
	if err := chat.CloseSend(); err != nil {
		return fmt.Errorf("Chat: %w", err)
	}
	if _, err := chat.Recv(); err != io.EOF {
		return fmt.Errorf("Chat: after our half-close the server should end the stream, got %v", err)
	}
	fmt.Printf("%sChat: %s\n", prefix, strings.Join(said, ", "))
	return nil
}

// deadlineRunsOut opens an endless stream, one reply a second, under a 300ms deadline.
func deadlineRunsOut(greeter greeterpb.GreeterClient, prefix string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	stream, err := greeter.Greetings(ctx, &greeterpb.GreetingsRequest{Name: "gopher", IntervalMs: 1000})
	if err != nil {
		return fmt.Errorf("Greetings: %w", err)
	}
	replies := 0
	for {
		_, err := stream.Recv()
		if err != nil {
			fmt.Printf("%sGreetings, a reply a second, deadline 300ms: %d reply, then %s\n", prefix, replies, show(err))
			return nil
		}
		replies++
	}
}

// show is a call's failure as a gRPC status: its code and message.
func show(err error) string {
	s := status.Convert(err)
	return fmt.Sprintf("%v %q", s.Code(), s.Message())
}
