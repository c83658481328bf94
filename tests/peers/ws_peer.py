#!/usr/bin/env python3
"""WebSocket test peer for Tarmac (uses the `websockets` package).

Usage:
  python3 ws_peer.py serve PORT [NAME]
      echo server on 127.0.0.1:PORT (0 = any); echoes text and binary frames,
      except the text "who", answered with JSON naming the server (NAME), the
      path of the upgrade request and its x-routed header; prints
      "LISTENING <port>" once bound.
  python3 ws_peer.py client URL
      e.g. ws://127.0.0.1:7002/chat; sends text "hello", a 100 KiB binary
      message and "bye", prints one JSON object with what came back.
  python3 ws_peer.py who URL [HEADER:VALUE ...]
      opens a socket with those request headers and asks "who"; prints JSON:
      {"status": 101, "who": {...}, "x_rule": ...} or, when the upgrade is
      refused, {"status": <code>}.
"""

import asyncio
import json
import os
import signal
import sys

import websockets

try:  # websockets >= 13
    from websockets.asyncio.client import connect as _connect
    from websockets.asyncio.server import serve as _serve

    NEW_API = True
except ImportError:  # legacy API
    _connect = websockets.connect
    _serve = websockets.serve
    NEW_API = False

TIMEOUT = 10.0
BINARY_LEN = 100 * 1024
MAX_SIZE = 4 * 1024 * 1024


SERVER_NAME = "ws-peer"


def _request_of(ws):
    """(path, headers) of the upgrade request, in either API."""
    if NEW_API:
        return ws.request.path, ws.request.headers
    return ws.path, ws.request_headers


async def _echo(ws, *_path):
    # *_path: very old legacy handlers receive (websocket, path).
    try:
        async for message in ws:
            if message == "who":
                path, headers = _request_of(ws)
                message = json.dumps(
                    {"server": SERVER_NAME, "path": path, "x_routed": headers.get("x-routed")}
                )
            await ws.send(message)
    except websockets.exceptions.ConnectionClosed:
        pass


async def serve(port):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with _serve(_echo, "127.0.0.1", port, max_size=MAX_SIZE) as server:
        bound = next(iter(server.sockets)).getsockname()[1]
        print("LISTENING %d" % bound, flush=True)
        await stop
    return 0


async def client(url):
    kwargs = {"max_size": MAX_SIZE, "open_timeout": TIMEOUT}
    if NEW_API:
        kwargs["proxy"] = None  # ignore proxies from the environment
    payload = os.urandom(BINARY_LEN)
    async with _connect(url, **kwargs) as ws:
        await ws.send("hello")
        text = await asyncio.wait_for(ws.recv(), TIMEOUT)
        await ws.send(payload)
        binary = await asyncio.wait_for(ws.recv(), TIMEOUT)
        await ws.send("bye")
        last = await asyncio.wait_for(ws.recv(), TIMEOUT)
    result = {
        "text": text if isinstance(text, str) else repr(text),
        "binary_len": len(binary),
        "binary_ok": isinstance(binary, bytes) and binary == payload,
        "last": last if isinstance(last, str) else repr(last),
    }
    print(json.dumps(result), flush=True)
    return 0


def _refused_status(error):
    """The HTTP status of a refused upgrade, or None for other failures."""
    response = getattr(error, "response", None)
    if response is not None and hasattr(response, "status_code"):
        return response.status_code
    return getattr(error, "status_code", None)


async def who(url, headers):
    kwargs = {"open_timeout": TIMEOUT}
    pairs = [tuple(h.split(":", 1)) for h in headers]
    if NEW_API:
        kwargs["proxy"] = None
        kwargs["additional_headers"] = pairs
    else:
        kwargs["extra_headers"] = pairs
    try:
        async with _connect(url, **kwargs) as ws:
            response_headers = ws.response.headers if NEW_API else ws.response_headers
            await ws.send("who")
            answer = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    except Exception as error:  # a refused upgrade is an answer too
        status = _refused_status(error)
        if status is None:
            raise
        print(json.dumps({"status": status}), flush=True)
        return 0
    result = {"status": 101, "who": answer, "x_rule": response_headers.get("x-rule")}
    print(json.dumps(result), flush=True)
    return 0


def main(argv):
    global SERVER_NAME
    if argv[1:2] == ["serve"] and len(argv) in (3, 4):
        if len(argv) == 4:
            SERVER_NAME = argv[3]
        return asyncio.run(serve(int(argv[2])))
    if argv[1:2] == ["client"] and len(argv) == 3:
        return asyncio.run(client(argv[2]))
    if argv[1:2] == ["who"] and len(argv) >= 3:
        return asyncio.run(who(argv[2], argv[3:]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
