"""A standard gRPC client in another language, with no code generated from our protos.

It checks a server's health with grpcio-health-checking, then learns the Greeter's
messages through server reflection alone and calls SayHello with them.

    target/py/bin/python scripts/grpc-reflect.py 127.0.0.1:<port>
"""

import sys

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main(address):
    channel = grpc.insecure_channel(address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ["", "greeter.v1.Greeter"]:
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        print(f"health {service or '(server)'}: {status}")

    reflection = ProtoReflectionDescriptorDatabase(channel)
    print("services: " + ", ".join(sorted(reflection.get_services())))
    # Every type below comes from the server's answers, none from a .proto of ours.
    method = DescriptorPool(reflection).FindMethodByName("greeter.v1.Greeter.SayHello")
    request_type = message_factory.GetMessageClass(method.input_type)
    reply_type = message_factory.GetMessageClass(method.output_type)
    say_hello = channel.unary_unary(
        "/greeter.v1.Greeter/SayHello",
        request_serializer=request_type.SerializeToString,
        response_deserializer=reply_type.FromString,
    )
    reply = say_hello(request_type(name="python"), timeout=5)
    print(f"SayHello: {reply.message} from {reply.node}")


if __name__ == "__main__":
    main(sys.argv[1])
