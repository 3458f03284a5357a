#!/usr/bin/env python3
"""The greeter over NATS, from Python: a client and a service that know nothing of Rust.

Both speak the NATS service protocol through nats-py (`nats.micro`) and carry the greeter's
protobuf messages, encoded here by hand (two small messages do not need the protobuf
package). The transport example's Rust side must work with either.

    python3 scripts/nats_service.py call --name ada      # find the service with $SRV.PING/INFO, call it
    python3 scripts/nats_service.py serve --node python-1  # a greeter instance of our own

Both take --url (default: $NATS_URL, else nats://127.0.0.1:4222). Needs nats-py
(scripts/requirements.txt; scripts/test.sh installs it into target/py).
"""

import argparse
import asyncio
import json
import os
import signal
import sys

import nats
import nats.errors
import nats.micro
from nats.micro.service import EndpointConfig, ServiceConfig

SERVICE, VERSION, METHOD = "transport-greeter", "1.0.0", "SayHello"
SUBJECT = f"{SERVICE}.{METHOD}"
# Scatter-gather has no last answer: stop once nobody has answered for this long.
QUIET = 0.2
# Only turns a hang into a failure.
PATIENCE = 10.0


def varint(value):
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_strings(fields):
    """Protobuf for a message of string fields: {field number: text}."""
    out = bytearray()
    for number, text in sorted(fields.items()):
        data = text.encode()
        if data:  # proto3 leaves empty strings out
            out += varint(number << 3 | 2) + varint(len(data)) + data
    return bytes(out)


def decode(data):
    """A flat protobuf message: {field number: str or int}; unknown wire types refused."""
    fields, at = {}, 0

    def read_varint():
        nonlocal at
        value, shift = 0, 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while at < len(data):
        key = read_varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields[number] = read_varint()
        elif wire == 2:
            length = read_varint()
            fields[number] = data[at:at + length].decode()
            at += length
        else:
            raise ValueError(f"wire type {wire} is not used by the greeter's messages")
    return fields


async def gather(nc, subject):
    """Every answer to one request on a discovery subject."""
    inbox = nc.new_inbox()
    answers = asyncio.Queue()

    async def collect(msg):
        await answers.put(json.loads(msg.data))

    sub = await nc.subscribe(inbox, cb=collect)
    await nc.publish(subject, b"", reply=inbox)
    found = []
    try:
        while True:
            found.append(await asyncio.wait_for(answers.get(), QUIET))
    except asyncio.TimeoutError:
        pass
    await sub.unsubscribe()
    return found


async def call(nc, name):
    pings = await gather(nc, f"$SRV.PING.{SERVICE}")
    if not pings:
        sys.exit(f"no instance of {SERVICE} answered $SRV.PING.{SERVICE}")
    for ping in sorted(pings, key=lambda p: (p.get("metadata") or {}).get("node", p["id"])):
        node = (ping.get("metadata") or {}).get("node", ping["id"])
        print(f"found {ping['name']} {ping['version']} on node {node}")
    endpoints = set()
    for info in await gather(nc, f"$SRV.INFO.{SERVICE}"):
        for endpoint in info["endpoints"]:
            endpoints.add((endpoint["name"], endpoint["subject"], endpoint.get("queue_group")))
    for name_, subject, queue in sorted(endpoints):
        print(f"endpoint {name_} on {subject}, queue group {queue}")
    for who in [name, ""]:
        reply = await nc.request(SUBJECT, encode_strings({1: who}), timeout=PATIENCE)
        headers = reply.headers or {}
        if "Nats-Service-Error" in headers:
            print(f"refused: {headers.get('Nats-Service-Error-Code')} {headers['Nats-Service-Error']}")
        else:
            fields = decode(reply.data)
            print(f"{fields.get(1, '')} from {fields.get(2, '')}")
    stats = await gather(nc, f"$SRV.STATS.{SERVICE}")
    requests = sum(e["num_requests"] for s in stats for e in s["endpoints"] if e["name"] == METHOD)
    errors = sum(e["num_errors"] for s in stats for e in s["endpoints"] if e["name"] == METHOD)
    print(f"stats: {METHOD} {requests} requests, {errors} errors")


async def serve(nc, node):
    served = 0

    async def say_hello(request):
        nonlocal served
        served += 1
        try:
            name = decode(request.data).get(1, "")
        except (ValueError, IndexError, UnicodeDecodeError) as error:
            await request.respond_error("400", f"not a HelloRequest: {error}")
            return
        if not name.strip():
            await request.respond_error("400", "name is empty")
            return
        await request.respond(encode_strings({1: f"hello {name}", 2: node}))

    config = ServiceConfig(name=SERVICE, version=VERSION, description="the greeter, in Python",
                           metadata={"node": node})
    service = await nats.micro.add_service(nc, config)
    group = service.add_group(name=SERVICE)
    await group.add_endpoint(EndpointConfig(name=METHOD, handler=say_hello))
    await nc.flush()
    print(f"{node}: serving {METHOD} as NATS service {SERVICE} {VERSION}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await service.stop()
    print(f"{node}: stopped: {served} calls served", flush=True)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    roles = parser.add_subparsers(dest="role", required=True)
    caller = roles.add_parser("call", help="find the service with $SRV.PING/INFO and call it")
    caller.add_argument("--name", default="ada")
    server = roles.add_parser("serve", help="run a greeter instance until SIGTERM")
    server.add_argument("--node", default="python-1")
    args = parser.parse_args()

    try:
        nc = await nats.connect(args.url, connect_timeout=3, max_reconnect_attempts=0)
    except (OSError, nats.errors.Error) as error:
        sys.exit(f"cannot reach NATS at {args.url}: {error}")
    try:
        if args.role == "call":
            await call(nc, args.name)
        else:
            await serve(nc, args.node)
    finally:
        await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
