package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"microkit/interop/greeterpb"
)

// greeter answers as the Rust examples' Greeter does: "hello <name>", signed with the node
// that answered (the round-robin client checks that the node it picked is the one that
// answered), and seq counting the replies of a stream from 1.
type greeter struct {
	greeterpb.UnimplementedGreeterServer
	node  string
	calls uint64 // Greeter calls received: the tally printed on stop
}

func (g *greeter) reply(name string, seq uint32) *greeterpb.HelloReply {
	return &greeterpb.HelloReply{Message: "hello " + name, Node: g.node, Seq: seq}
}

func (g *greeter) SayHello(ctx context.Context, req *greeterpb.HelloRequest) (*greeterpb.HelloReply, error) {
	atomic.AddUint64(&g.calls, 1)
	return g.reply(req.GetName(), 0), nil
}

func (g *greeter) Greetings(req *greeterpb.GreetingsRequest, stream greeterpb.Greeter_GreetingsServer) error {
	atomic.AddUint64(&g.calls, 1)
	interval := time.Duration(req.GetIntervalMs()) * time.Millisecond
	// count 0: until the client goes away, which cancels the stream's context.
	for seq := uint32(1); req.GetCount() == 0 || seq <= req.GetCount(); seq++ {
		if seq > 1 && interval > 0 {
			select {
			case <-time.After(interval):
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
		if err := stream.Send(g.reply(req.GetName(), seq)); err != nil {
			return err
		}
	}
	return nil
}

func (g *greeter) CollectNames(stream greeterpb.Greeter_CollectNamesServer) error {
	atomic.AddUint64(&g.calls, 1)
	var names []string
	for {
		req, err := stream.Recv()
		if err == io.EOF { // the client half-closed: time to answer
			return stream.SendAndClose(&greeterpb.NamesSummary{
				Count:   uint32(len(names)),
				Message: fmt.Sprintf("hello %s from %s", strings.Join(names, ", "), g.node),
			})
		}
		if err != nil {
			return err
		}
		names = append(names, req.GetName())
	}
}

func (g *greeter) Chat(stream greeterpb.Greeter_ChatServer) error {
	atomic.AddUint64(&g.calls, 1)
	for seq := uint32(1); ; seq++ {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(g.reply(req.GetName(), seq)); err != nil {
			return err
		}
	}
}
