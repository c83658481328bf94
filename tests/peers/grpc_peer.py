#!/usr/bin/env python3
"""Real grpcio test peer for Tarmac, without protobuf code generation.

Messages are raw bytes (no serializers on either side). Service
`tarmac.test.Echo`:

  Unary         request bytes -> b"echo:" + request, with trailing metadata
                x-peer-trailer: yes. Request b"fail" aborts with
                PERMISSION_DENIED / "denied by test".
  ServerStream  request is an ASCII integer N -> b"msg-0" .. b"msg-{N-1}".
  Bidi          each incoming message m -> b"bidi:" + m.

With a NAME, the server also adds trailing metadata x-peer-name: NAME to every
Unary and ServerStream answer, so that a caller can tell which server answered.

Unary also obeys metadata, for retries and deadlines: `x-fail-first: N` with
`x-request-id: ID` aborts the first N calls of that ID with UNAVAILABLE (after
`x-fail-sleep-ms` milliseconds, if given); `x-sleep-ms: N` waits N ms before answering.
Its answers carry trailing metadata `x-calls` (calls of that ID so far) and
`x-time-remaining-ms` (the deadline the server was given, as grpcio reads it from
`grpc-timeout`; `none` without one).

Usage:
  python3 grpc_peer.py serve PORT [NAME]
                                      plaintext h2c on 127.0.0.1:PORT (0 = any);
                                      prints "LISTENING <port>" once bound.
  python3 grpc_peer.py client TARGET  e.g. 127.0.0.1:7001; runs every check and
                                      prints one JSON object with the results.
  python3 grpc_peer.py call TARGET METHOD [KEY=VALUE...]
                                      one call of METHOD (Unary, ServerStream or
                                      Bidi) with the metadata given; prints one JSON
                                      object: code, details, messages, peer
                                      (x-peer-name), trailers. A pair
                                      deadline=SECONDS is the call's timeout
                                      (default 10; `none` for no deadline at
                                      all), not metadata.
"""

import json
import signal
import sys
import threading
import time
from concurrent import futures

import grpc

SERVICE = "tarmac.test.Echo"
DEADLINE = 10.0
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


# ---------------------------------------------------------------- server ---

NAME = None
CALLS = {}
CALLS_LOCK = threading.Lock()


def _unary(request, context):
    if request == b"fail":
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied by test")
    metadata = dict(context.invocation_metadata())
    with CALLS_LOCK:
        key = metadata.get("x-request-id", "")
        CALLS[key] = CALLS.get(key, 0) + 1
        calls = CALLS[key]
    remaining = context.time_remaining()
    remaining = "none" if remaining is None or remaining > 1e9 else str(int(remaining * 1000))
    if calls <= int(metadata.get("x-fail-first", "0")):
        time.sleep(int(metadata.get("x-fail-sleep-ms", "0")) / 1000.0)
        context.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose, call %d" % calls)
    time.sleep(int(metadata.get("x-sleep-ms", "0")) / 1000.0)
    trailers = [("x-peer-trailer", "yes"), ("x-calls", str(calls)), ("x-time-remaining-ms", remaining)]
    if NAME:
        trailers.append(("x-peer-name", NAME))
    context.set_trailing_metadata(tuple(trailers))
    return b"echo:" + request


def _server_stream(request, context):
    if NAME:
        context.set_trailing_metadata((("x-peer-name", NAME),))
    n = int(request.decode("ascii").strip())
    for i in range(n):
        yield b"msg-%d" % i


def _bidi(request_iterator, context):
    for msg in request_iterator:
        yield b"bidi:" + msg


def serve(port):
    # grpcio enables SO_REUSEPORT by default, which would let a second server
    # silently share a busy port; turn it off so a port clash is an error.
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[("grpc.so_reuseport", 0)],
    )
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(_unary),
            "ServerStream": grpc.unary_stream_rpc_method_handler(_server_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    try:
        bound = server.add_insecure_port("127.0.0.1:%d" % port)
    except RuntimeError:  # newer grpcio raises instead of returning 0
        bound = 0
    if bound == 0:
        print("failed to bind 127.0.0.1:%d" % port, file=sys.stderr, flush=True)
        return 1
    server.start()
    print("LISTENING %d" % bound, flush=True)

    def _stop(signum, frame):
        server.stop(grace=None)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.wait_for_termination()
    return 0


# ---------------------------------------------------------------- client ---

def client(target):
    result = {}
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        unary = channel.unary_unary("/%s/Unary" % SERVICE)
        server_stream = channel.unary_stream("/%s/ServerStream" % SERVICE)
        bidi = channel.stream_stream("/%s/Bidi" % SERVICE)

        # Unary success + trailing metadata.
        response, call = unary.with_call(b"hi", timeout=DEADLINE)
        result["unary"] = response.decode("utf-8", "replace")
        trailers = dict(call.trailing_metadata() or ())
        result["unary_trailer"] = trailers.get("x-peer-trailer")

        # Unary failure: status code and details must survive the hop.
        try:
            unary(b"fail", timeout=DEADLINE)
            result["fail_code"] = "OK"
            result["fail_details"] = None
        except grpc.RpcError as err:
            result["fail_code"] = err.code().name
            result["fail_details"] = err.details()

        # Server streaming of 5 messages.
        result["stream"] = [
            m.decode("utf-8", "replace") for m in server_stream(b"5", timeout=DEADLINE)
        ]

        # Bidirectional streaming of 3 messages.
        sent = [b"a", b"b", b"c"]
        result["bidi"] = [
            m.decode("utf-8", "replace") for m in bidi(iter(sent), timeout=DEADLINE)
        ]

    result["all_ok"] = (
        result["unary"] == "echo:hi"
        and result["unary_trailer"] == "yes"
        and result["fail_code"] == "PERMISSION_DENIED"
        and result["fail_details"] == "denied by test"
        and result["stream"] == ["msg-%d" % i for i in range(5)]
        and result["bidi"] == ["bidi:a", "bidi:b", "bidi:c"]
    )
    print(json.dumps(result), flush=True)
    return 0


def call(target, method, pairs):
    """One call of `method` with metadata `pairs` (KEY=VALUE); the outcome as JSON."""
    deadline = DEADLINE
    metadata = []
    for key, value in (p.split("=", 1) for p in pairs):
        if key == "deadline":
            deadline = None if value == "none" else float(value)
        else:
            metadata.append((key, value))
    metadata = tuple(metadata)
    result = {"method": method, "code": "OK", "details": None, "messages": [], "peer": None, "trailers": {}}
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        path = "/%s/%s" % (SERVICE, method)
        try:
            if method == "Unary":
                response, rpc = channel.unary_unary(path).with_call(
                    b"hi", metadata=metadata, timeout=deadline)
                result["messages"] = [response.decode("utf-8", "replace")]
            elif method == "ServerStream":
                rpc = channel.unary_stream(path)(b"2", metadata=metadata, timeout=deadline)
                result["messages"] = [m.decode("utf-8", "replace") for m in rpc]
            else:
                rpc = channel.stream_stream(path)(iter([b"a"]), metadata=metadata, timeout=deadline)
                result["messages"] = [m.decode("utf-8", "replace") for m in rpc]
            result["trailers"] = dict(rpc.trailing_metadata() or ())
            result["peer"] = result["trailers"].get("x-peer-name")
        except grpc.RpcError as err:
            result["code"] = err.code().name
            result["details"] = err.details()
            result["trailers"] = dict(err.trailing_metadata() or ())
    print(json.dumps(result), flush=True)
    return 0


def main(argv):
    if len(argv) >= 3 and argv[1] == "serve" and len(argv) <= 4:
        global NAME
        NAME = argv[3] if len(argv) == 4 else None
        return serve(int(argv[2]))
    if len(argv) == 3 and argv[1] == "client":
        return client(argv[2])
    if len(argv) >= 4 and argv[1] == "call":
        return call(argv[2], argv[3], argv[4:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
