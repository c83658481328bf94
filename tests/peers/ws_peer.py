#!/usr/bin/env python3
"""WebSocket test peer for Tarmac (uses the `websockets` package).

Usage:
  python3 ws_peer.py serve PORT [NAME]
      echo server on 127.0.0.1:PORT (0 = any); echoes text and binary frames,
      except the text "who", answered with JSON naming the server (NAME), the
      path of the upgrade request and its x-routed header; refuses upgrades to
      /refuse with 403; prints "LISTENING <port>" once bound.
  python3 ws_peer.py client URL
      e.g. ws://127.0.0.1:7002/chat; sends text "hello", a 100 KiB binary
      message and "bye", prints one JSON object with what came back.
  python3 ws_peer.py who URL [HEADER:VALUE ...]
      opens a socket with those request headers and asks "who"; prints JSON:
      {"status": 101, "who": {...}, "x_rule": ...} or, when the upgrade is
      refused, {"status": <code>}.
  python3 ws_peer.py h2client URL [HEADER:VALUE ...]
      WebSocket over HTTP/2 (RFC 8441), with the `h2` package: h2c with prior
      knowledge to URL's host and port, an extended CONNECT (:protocol
      websocket) for its path with those headers, then "hello", a 100 KiB
      binary message, "who" and "bye" as the client command does, and a close.
      Prints one JSON object: what came back (and the x-rule header of the
      200), whether the server announced SETTINGS_ENABLE_CONNECT_PROTOCOL, and
      for a refused stream its status, body, tarmac-proxy-error header or
      reset code, and whether it ended.
"""

import asyncio
import http
import json
import os
import signal
import socket
import sys
import urllib.parse

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


REFUSED_PATH = "/refuse"


if NEW_API:

    def _refuse(connection, request):
        if request.path == REFUSED_PATH:
            return connection.respond(http.HTTPStatus.FORBIDDEN, "refused by the test server\n")
        return None

else:

    async def _refuse(path, _headers):
        if path == REFUSED_PATH:
            return http.HTTPStatus.FORBIDDEN, [], b"refused by the test server\n"
        return None


async def serve(port):
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    async with _serve(_echo, "127.0.0.1", port, max_size=MAX_SIZE, process_request=_refuse) as server:
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


class H2Stream:
    """One extended CONNECT stream on an h2c connection, driven by hand (the `h2`
    package is sans-I/O): the events it is sent, flow control acknowledged."""

    STREAM = 1

    def __init__(self, host, port):
        import h2.config
        import h2.connection

        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.flush()
        self.settings = False
        self.status = None
        self.headers = {}
        self.data = bytearray()
        self.ended = False
        self.reset = None

    def flush(self):
        out = self.conn.data_to_send()
        if out:
            self.sock.sendall(out)

    def pump(self):
        """Reads once (a silent peer times out: a hung stream fails the run)."""
        import h2.events as ev

        chunk = self.sock.recv(65536)
        if not chunk:
            self.ended = True
            return
        for event in self.conn.receive_data(chunk):
            if isinstance(event, ev.RemoteSettingsChanged):
                self.settings = True
            elif isinstance(event, ev.ResponseReceived):
                self.headers = dict(event.headers)
                self.status = int(self.headers[":status"])
            elif isinstance(event, ev.DataReceived):
                self.data += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, ev.StreamEnded):
                self.ended = True
            elif isinstance(event, ev.StreamReset):
                self.reset = getattr(event.error_code, "name", str(event.error_code))
                self.ended = True
            elif isinstance(event, ev.ConnectionTerminated):
                self.reset = self.reset or "GOAWAY %s" % getattr(event.error_code, "name", event.error_code)
                self.ended = True
        self.flush()

    def until(self, done):
        """Reads until `done()`, or until the stream has ended."""
        while not done() and not self.ended:
            self.pump()

    def open(self, path, authority, extra):
        headers = [
            (":method", "CONNECT"),
            (":protocol", "websocket"),
            (":scheme", "http"),
            (":path", path),
            (":authority", authority),
            ("sec-websocket-version", "13"),
        ] + [(name.lower(), value) for name, value in extra]
        self.conn.send_headers(self.STREAM, headers, end_stream=False)
        self.flush()
        self.until(lambda: self.status is not None or self.ended)

    def send(self, data):
        view = memoryview(data)
        while view:
            window = min(self.conn.local_flow_control_window(self.STREAM), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.pump()
                continue
            self.conn.send_data(self.STREAM, bytes(view[:window]))
            self.flush()
            view = view[window:]


def h2client(url, headers):
    from websockets.frames import Opcode
    from websockets.protocol import Protocol, Side

    parts = urllib.parse.urlsplit(url)
    stream = H2Stream(parts.hostname, parts.port)
    stream.until(lambda: stream.settings)
    result = {"connect_protocol": bool(stream.conn.remote_settings.enable_connect_protocol)}
    stream.open(parts.path or "/", parts.netloc, [tuple(h.split(":", 1)) for h in headers])
    result["status"] = stream.status
    result["x_rule"] = stream.headers.get("x-rule")
    if stream.status != 200:
        stream.until(lambda: stream.ended)
        result["body"] = stream.data.decode("utf-8", "replace")
        result["proxy_error"] = stream.headers.get("tarmac-proxy-error")
        result["reset"] = stream.reset
        result["ended"] = stream.ended
        print(json.dumps(result), flush=True)
        return 0

    ws = Protocol(Side.CLIENT, max_size=MAX_SIZE)
    frames = []

    def send(kind, payload):
        getattr(ws, "send_" + kind)(payload)
        for chunk in ws.data_to_send():
            stream.send(chunk)

    def recv():
        message, opcode = bytearray(), None
        while True:
            while not frames:
                if stream.data:
                    ws.receive_data(bytes(stream.data))
                    stream.data.clear()
                    frames.extend(ws.events_received())
                    for chunk in ws.data_to_send():  # pongs, the close's answer
                        stream.send(chunk)
                elif stream.ended:
                    raise ConnectionError("the stream ended mid-conversation: %r" % stream.reset)
                else:
                    stream.pump()
            frame = frames.pop(0)
            if frame.opcode in (Opcode.PING, Opcode.PONG):
                continue
            opcode = opcode or frame.opcode  # continuations keep the first frame's kind
            message += frame.data
            if frame.fin:
                return opcode.name.lower(), bytes(message)

    payload = os.urandom(BINARY_LEN)
    send("text", b"hello")
    result["text"] = recv()[1].decode()
    send("binary", payload)
    kind, binary = recv()
    result["binary_len"] = len(binary)
    result["binary_ok"] = kind == "binary" and binary == payload
    send("text", b"who")
    result["who"] = json.loads(recv()[1])
    send("text", b"bye")
    result["last"] = recv()[1].decode()
    ws.send_close(1000)
    for chunk in ws.data_to_send():
        stream.send(chunk)
    result["closed"] = recv()[0] == "close"
    stream.conn.end_stream(H2Stream.STREAM)
    stream.flush()
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
    if argv[1:2] == ["h2client"] and len(argv) >= 3:
        return h2client(argv[2], argv[3:])
    if argv[1:2] == ["who"] and len(argv) >= 3:
        return asyncio.run(who(argv[2], argv[3:]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
