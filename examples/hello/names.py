"""`names`: answers GET / with a JSON list of names, and which replica answered.

Listens on 127.0.0.1:$PORT, as `tarmac up` tells it (docs/local-mode.md).
"""

import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAMES = ["Ada", "Grace", "Linus"]
REPLICA = f"{os.environ.get('TARMAC_WORKLOAD', 'names')}-{os.environ.get('TARMAC_REPLICA', '0')}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({"names": NAMES, "from": REPLICA}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


port = int(os.environ["PORT"])
print(f"names listening on 127.0.0.1:{port}")
ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
