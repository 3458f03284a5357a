package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"microkit/interop/calcpb"
	"microkit/interop/greeterpb"
)

// proxy calls through the proxy example: the Greeter and the Calculator, which it forwards
// without knowing either, and the refusals: a node's (a bad argument, a method it lacks)
// and the proxy's own (a service nobody registered).
func proxy(conn *grpc.ClientConn) error {
	greeter := greeterpb.NewGreeterClient(conn)
	if err := everyShape(greeter, "Greeter/"); err != nil {
		return err
	}
	if err := deadlineRunsOut(greeter, "Greeter/"); err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	calc := calcpb.NewCalculatorClient(conn)
	var header metadata.MD
	sum, err := calc.Add(ctx, &calcpb.AddRequest{Terms: []int64{40, 2}}, grpc.Header(&header))
	if err != nil {
		return fmt.Errorf("Add: %w", err)
	}
	if trailersOnly(header) != "" {
		return fmt.Errorf("Add: a reply must come after response headers, and none came")
	}
	fmt.Printf("Calculator/Add 40 2: %d from %s\n", sum.GetSum(), sum.GetNode())
	for _, upTo := range []uint32{3, 100001} {
		if err := count(ctx, calc, upTo); err != nil {
			return err
		}
	}

	// Paths no stub of ours has: a method the Calculator lacks, a service nobody serves.
	for _, path := range []string{"/calc.v1.Calculator/Divide", "/billing.v1.Billing/Charge"} {
		header = nil
		err := conn.Invoke(ctx, path, &calcpb.AddRequest{Terms: []int64{1}}, &calcpb.AddReply{}, grpc.Header(&header))
		fmt.Printf("%s: %s%s\n", path, show(err), trailersOnly(header))
	}
	return nil
}

// count reads a Count stream. A refusal before the first reply arrives trailers-only: one
// HEADERS frame that holds the status and ends the stream, with no response headers before
// it; grpc-go hands it over at the first Recv.
func count(ctx context.Context, calc calcpb.CalculatorClient, upTo uint32) error {
	stream, err := calc.Count(ctx, &calcpb.CountRequest{UpTo: upTo})
	if err != nil {
		return fmt.Errorf("Count: %w", err)
	}
	var ns []string
	var from string
	for {
		reply, err := stream.Recv()
		if err == io.EOF {
			fmt.Printf("Calculator/Count %d: %s from %s\n", upTo, strings.Join(ns, " "), from)
			return nil
		}
		if err != nil {
			header, _ := stream.Header()
			fmt.Printf("Calculator/Count %d: after %d replies, %s%s\n", upTo, len(ns), show(err), trailersOnly(header))
			return nil
		}
		ns = append(ns, fmt.Sprint(reply.GetN()))
		from = reply.GetNode()
	}
}

func trailersOnly(header metadata.MD) string {
	if len(header) == 0 {
		return " (trailers-only)"
	}
	return ""
}
