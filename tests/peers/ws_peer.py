#!/usr/bin/env python3
"""WebSocket test peer for Tarmac (uses the `websockets` package).

Usage:
  python3 ws_peer.py serve PORT    echo server on 127.0.0.1:PORT (0 = any);
                                   echoes text and binary frames; prints
                                   "LISTENING <port>" once bound.
  python3 ws_peer.py client URL    e.g. ws://127.0.0.1:7002/chat; sends text
                                   "hello", a 100 KiB binary message and "bye",
                                   prints one JSON object with what came back.
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


async def _echo(ws, *_path):
    # *_path: very old legacy handlers receive (websocket, path).
    try:
        async for message in ws:
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


def main(argv):
    if len(argv) != 3 or argv[1] not in ("serve", "client"):
        print(__doc__, file=sys.stderr)
        return 2
    if argv[1] == "serve":
        return asyncio.run(serve(int(argv[2])))
    return asyncio.run(client(argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
