package main

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	rpb "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// checkHealth asks grpc.health.v1 about the whole server (""), the Greeter, and a service
// the server does not have (NotFound, by the health protocol).
func checkHealth(conn *grpc.ClientConn) error {
	health := healthpb.NewHealthClient(conn)
	for _, service := range []string{"", "greeter.v1.Greeter", "billing.v1.Billing"} {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		reply, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		cancel()
		if err != nil {
			fmt.Printf("health %q: %s\n", service, show(err))
		} else {
			fmt.Printf("health %q: %v\n", service, reply.GetStatus())
		}
	}
	return nil
}

// reflect lists the server's services, then calls SayHello knowing nothing but what
// reflection tells: the file that defines the Greeter, decoded into descriptors, and
// messages built from those (dynamicpb) instead of generated stubs.
//
// grpc-go 1.33 (Debian 12) ships reflection v1alpha only; the Rust servers answer v1 and
// v1alpha alike, with the same messages.
func reflect(conn *grpc.ClientConn) error {
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	stream, err := rpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		return fmt.Errorf("reflection: %w", err)
	}
	ask := func(req *rpb.ServerReflectionRequest) (*rpb.ServerReflectionResponse, error) {
		if err := stream.Send(req); err != nil {
			return nil, err
		}
		return stream.Recv()
	}

	answer, err := ask(&rpb.ServerReflectionRequest{MessageRequest: &rpb.ServerReflectionRequest_ListServices{}})
	if err != nil {
		return fmt.Errorf("reflection, listing: %w", err)
	}
	var names []string
	for _, service := range answer.GetListServicesResponse().GetService() {
		names = append(names, service.GetName())
	}
	sort.Strings(names)
	fmt.Printf("reflection lists: %s\n", strings.Join(names, ", "))

	const greeter = "greeter.v1.Greeter"
	answer, err = ask(&rpb.ServerReflectionRequest{
		MessageRequest: &rpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: greeter},
	})
	if err != nil {
		return fmt.Errorf("reflection, asking for %s: %w", greeter, err)
	}
	if e := answer.GetErrorResponse(); e != nil {
		return fmt.Errorf("reflection, asking for %s: %s", greeter, e.GetErrorMessage())
	}
	// The answer holds the file and those it imports, each a serialized FileDescriptorProto.
	set := &descriptorpb.FileDescriptorSet{}
	for _, raw := range answer.GetFileDescriptorResponse().GetFileDescriptorProto() {
		file := &descriptorpb.FileDescriptorProto{}
		if err := proto.Unmarshal(raw, file); err != nil {
			return fmt.Errorf("reflection: a file descriptor that does not decode: %w", err)
		}
		set.File = append(set.File, file)
	}
	files, err := protodesc.NewFiles(set)
	if err != nil {
		return fmt.Errorf("reflection: %w", err)
	}
	found, err := files.FindDescriptorByName(greeter)
	if err != nil {
		return fmt.Errorf("reflection: %w", err)
	}
	service, ok := found.(protoreflect.ServiceDescriptor)
	if !ok {
		return fmt.Errorf("reflection: %s is not a service", greeter)
	}
	var shapes []string
	for i := 0; i < service.Methods().Len(); i++ {
		method := service.Methods().Get(i)
		shapes = append(shapes, fmt.Sprintf("%s %s", method.Name(), shape(method)))
	}
	fmt.Printf("reflected %s: %s\n", greeter, strings.Join(shapes, ", "))

	method := service.Methods().ByName("SayHello")
	request := dynamicpb.NewMessage(method.Input())
	request.Set(method.Input().Fields().ByName("name"), protoreflect.ValueOfString("reflection"))
	reply := dynamicpb.NewMessage(method.Output())
	path := fmt.Sprintf("/%s/%s", service.FullName(), method.Name())
	if err := conn.Invoke(ctx, path, request, reply); err != nil {
		return fmt.Errorf("the reflected call: %w", err)
	}
	fmt.Printf("reflected call %s: %s\n", path, fields(reply))
	return nil
}

// shape is a method's call shape, read from its descriptor.
func shape(method protoreflect.MethodDescriptor) string {
	switch {
	case method.IsStreamingClient() && method.IsStreamingServer():
		return "bidi-streaming"
	case method.IsStreamingClient():
		return "client-streaming"
	case method.IsStreamingServer():
		return "server-streaming"
	default:
		return "unary"
	}
}

// fields prints the fields a message has set, in their declared order (protojson's
// output varies its spacing on purpose, so it is no good for comparing).
func fields(message *dynamicpb.Message) string {
	var set []string
	all := message.Descriptor().Fields()
	for i := 0; i < all.Len(); i++ {
		field := all.Get(i)
		if message.Has(field) {
			set = append(set, fmt.Sprintf("%s=%q", field.Name(), message.Get(field).String()))
		}
	}
	return strings.Join(set, " ")
}
