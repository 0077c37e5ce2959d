"""An HTTP proxy that adds a fixed delay to every request, for measuring
round trips against a local S3 (moto): `python latency_proxy.py PORT
UPSTREAM_PORT DELAY_MS LOG`. Each request is forwarded as it came (method,
path, headers, body) after DELAY_MS, and one line per request is appended to
LOG (method, path and the time it came), so a benchmark can count them."""
import http.client
import http.server
import sys
import threading
import time

PORT, UPSTREAM, DELAY_MS, LOG = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def forward(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        with lock, open(LOG, "a") as f:
            f.write(f"{self.command} {self.path} {time.time():.3f}\n")
        time.sleep(DELAY_MS / 1000)
        conn = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=120)
        conn.request(self.command, self.path, body=body, headers=dict(self.headers))
        r = conn.getresponse()
        data = r.read()
        self.send_response(r.status, r.reason)
        for k, v in r.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        conn.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
