"""`greeter`: answers GET / with a greeting for the people `names` knows.

It reaches `names` at $NAMES_URL, a listener of its own sidecar: the request leaves
through the greeter's sidecar and arrives through a names replica's sidecar.
"""

import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAMES_URL = os.environ["NAMES_URL"]
GREETING = os.environ.get("GREETING", "Hello")
REPLICA = f"{os.environ.get('TARMAC_WORKLOAD', 'greeter')}-{os.environ.get('TARMAC_REPLICA', '0')}"
# Straight to the sidecar: never through an HTTP proxy from the environment.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        try:
            with OPENER.open(NAMES_URL + "/", timeout=5) as response:
                names = json.load(response)
            text = f"{GREETING}, {', '.join(names['names'])}! (names from {names['from']}, greeted by {REPLICA})\n"
            status = 200
        except Exception as e:  # noqa: BLE001 - any failure is the answer
            text = f"{REPLICA} cannot reach names at {NAMES_URL}: {e}\n"
            status = 502
        body = text.encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain; charset=utf-8")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


port = int(os.environ["PORT"])
print(f"greeter listening on 127.0.0.1:{port}, names at {NAMES_URL}")
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
