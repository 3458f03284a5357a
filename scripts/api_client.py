"""Calls the api example's gateway with nothing but Python's standard library (urllib), as
any HTTP client would: no gRPC, no stubs, no proto. Used by tests/api.rs.

    python3 scripts/api_client.py <gateway URL> <token of ada> <token of bo> <token of cy>

Prints one JSON line per call: its name, HTTP status, Retry-After and content type, and the
body (parsed where it is one JSON document, else the text).
"""

import json
import sys
import urllib.error
import urllib.request

base, ada, bo, cy = sys.argv[1:5]


def call(name, path, body, token=None, accept=None, method="POST"):
    data = body if isinstance(body, bytes) else body.encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", "Bearer " + token)
    if accept:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, headers, text = response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as refused:
        status, headers, text = refused.code, refused.headers, refused.read().decode()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    print(json.dumps({
        "name": name,
        "status": status,
        "retry_after": headers.get("Retry-After"),
        "type": headers.get("Content-Type"),
        "body": parsed,
    }), flush=True)


call("unary", "/greeter.v1.Greeter/SayHello", '{"name":"py"}', ada)
call("int64", "/calc.v1.Calculator/Add", '{"terms":[1,2,3]}', ada)
call("ndjson", "/greeter.v1.Greeter/Greetings", '{"name":"py","count":3}', ada)
call("sse", "/calc.v1.Calculator/Count", '{"upTo":2}', ada, accept="text/event-stream")
call("no token", "/greeter.v1.Greeter/SayHello", "{}")
call("bad token", "/greeter.v1.Greeter/SayHello", "{}", ada[:-4] + "AAAA")
call("no scope", "/calc.v1.Calculator/Add", '{"terms":[1]}', bo)
call("too big", "/greeter.v1.Greeter/SayHello", b'{"name":"' + b"x" * 70000 + b'"}', ada)
call("too deep", "/greeter.v1.Greeter/SayHello", "[" * 40 + "]" * 40, ada)
call("bad json", "/greeter.v1.Greeter/SayHello", '{"nom":"py"}', ada)
call("get", "/greeter.v1.Greeter/SayHello", b"", ada, method="GET")
for i in range(13):
    call("burst", "/greeter.v1.Greeter/SayHello", '{"name":"cy"}', cy)
for i in range(3):
    call("failing", "/stock.v1.Stock/Get", '{"sku":"tea"}', ada)
