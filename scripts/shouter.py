#!/usr/bin/env python3
"""A plain HTTP program that joins the system through the sidecar.

It knows HTTP, JSON and the sidecar's URL: nothing of gRPC, the registry or Rust. It
registers itself with `POST /registry` (the answer holds the service's token), repeats
that with the token as its heartbeat, answers `POST /upper` and `POST /greet` (which
calls the Greeter through the sidecar), and deregisters with `DELETE /registry/...` and
the token when stopped (SIGTERM or ctrl-c).

    python3 scripts/shouter.py --sidecar http://127.0.0.1:8090

Standard library only.
"""

import argparse
import json
import signal
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVICE = "shouter"


def sidecar_request(sidecar, method, path, body=None, token=None):
    """One JSON request to the sidecar; returns (status, decoded JSON answer)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    request = urllib.request.Request(sidecar + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def handler_for(node_id, sidecar):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("content-length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except json.JSONDecodeError as error:
                return self.answer(400, {"error": f"bad JSON: {error}"})
            if self.path == "/upper":
                return self.answer(200, {"text": str(body.get("text", "")).upper(), "by": node_id})
            if self.path == "/greet":
                status, reply = sidecar_request(
                    sidecar, "POST", "/greeter/SayHello", {"name": body.get("name", "")}
                )
                if status != 200:
                    return self.answer(502, {"error": f"greeter via sidecar: {status} {reply}"})
                message = reply["message"]
                return self.answer(200, {"greeter said": message, "shouted": message.upper()})
            return self.answer(404, {"error": f"no route {self.path}"})

        def answer(self, status, value):
            data = json.dumps(value).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):  # quiet: stdout is for the one status line
            pass

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sidecar", default="http://127.0.0.1:8090", help="the sidecar's URL")
    parser.add_argument("--id", default="shouter-py", help="this node's id")
    parser.add_argument("--ttl", type=int, default=6, help="seconds the registry keeps us without a heartbeat")
    args = parser.parse_args()
    sidecar = args.sidecar.rstrip("/")

    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(args.id, sidecar))
    address = "127.0.0.1:%d" % server.server_address[1]
    join = {"service": SERVICE, "id": args.id, "address": address, "ttl_secs": args.ttl}

    status, answer = sidecar_request(sidecar, "POST", "/registry", join)
    if status != 200:
        sys.exit(f"registering through {sidecar} failed: {status} {answer}")
    # The service's name is ours now: renewing or leaving takes the token it came with.
    token = answer["token"]

    stopping = threading.Event()

    def heartbeat():
        # Registering again before the TTL runs out is the heartbeat: only this program
        # knows it is alive, so the sidecar leaves the job to it.
        while not stopping.wait(args.ttl / 3):
            sidecar_request(sidecar, "POST", "/registry", join, token)

    def stop(signum, frame):
        stopping.set()
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    threading.Thread(target=heartbeat, daemon=True).start()
    print(f"{SERVICE}/{args.id} registered through {sidecar}, serving on {address}", flush=True)
    server.serve_forever()

    status, answer = sidecar_request(sidecar, "DELETE", f"/registry/{SERVICE}/{args.id}", None, token)
    print(f"{SERVICE}/{args.id} deregistered: {status}", flush=True)


if __name__ == "__main__":
    main()
