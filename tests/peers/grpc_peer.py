#!/usr/bin/env python3
"""Real grpcio test peer for Tarmac, without protobuf code generation.

Messages are raw bytes (no serializers on either side). Service
`tarmac.test.Echo`:

  Unary         request bytes -> b"echo:" + request, with trailing metadata
                x-peer-trailer: yes. Request b"fail" aborts with
                PERMISSION_DENIED / "denied by test".
  ServerStream  request is an ASCII integer N -> b"msg-0" .. b"msg-{N-1}".
  Bidi          each incoming message m -> b"bidi:" + m.

Usage:
  python3 grpc_peer.py serve PORT     plaintext h2c on 127.0.0.1:PORT (0 = any);
                                      prints "LISTENING <port>" once bound.
  python3 grpc_peer.py client TARGET  e.g. 127.0.0.1:7001; runs every check and
                                      prints one JSON object with the results.
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

def _unary(request, context):
    if request == b"fail":
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied by test")
    context.set_trailing_metadata((("x-peer-trailer", "yes"),))
    return b"echo:" + request


def _server_stream(request, context):
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


def main(argv):
    if len(argv) != 3 or argv[1] not in ("serve", "client"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[1] == "serve":
        return serve(int(argv[2]))
    return client(argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
