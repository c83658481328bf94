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

Usage:
  python3 grpc_peer.py serve PORT [NAME]
                                      plaintext h2c on 127.0.0.1:PORT (0 = any);
                                      prints "LISTENING <port>" once bound.
  python3 grpc_peer.py client TARGET  e.g. 127.0.0.1:7001; runs every check and
                                      prints one JSON object with the results.
  python3 grpc_peer.py call TARGET METHOD [KEY=VALUE...]
                                      one call of METHOD (Unary, ServerStream or
                                      Bidi) with the metadata given; prints one JSON
                                      object: code, messages, peer (x-peer-name).
"""

import json
import signal
import sys
from concurrent import futures

import grpc

SERVICE = "tarmac.test.Echo"
DEADLINE = 10.0
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


# ---------------------------------------------------------------- server ---

NAME = None


def _unary(request, context):
    if request == b"fail":
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied by test")
    trailers = [("x-peer-trailer", "yes")]
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
    metadata = tuple(tuple(p.split("=", 1)) for p in pairs)
    result = {"method": method, "code": "OK", "details": None, "messages": [], "peer": None}
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        path = "/%s/%s" % (SERVICE, method)
        try:
            if method == "Unary":
                response, rpc = channel.unary_unary(path).with_call(
                    b"hi", metadata=metadata, timeout=DEADLINE)
                result["messages"] = [response.decode("utf-8", "replace")]
            elif method == "ServerStream":
                rpc = channel.unary_stream(path)(b"2", metadata=metadata, timeout=DEADLINE)
                result["messages"] = [m.decode("utf-8", "replace") for m in rpc]
            else:
                rpc = channel.stream_stream(path)(iter([b"a"]), metadata=metadata, timeout=DEADLINE)
                result["messages"] = [m.decode("utf-8", "replace") for m in rpc]
            result["peer"] = dict(rpc.trailing_metadata() or ()).get("x-peer-name")
        except grpc.RpcError as err:
            result["code"] = err.code().name
            result["details"] = err.details()
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
