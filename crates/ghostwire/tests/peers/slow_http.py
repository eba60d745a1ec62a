"""HTTP/1.1 backend for the mesh tests: /slow answers after 3 s (the drain test), /headers
lists the request's headers (what the proxy told the app), anything else "done" at once."""
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
import socket


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.startswith("/slow"):
            time.sleep(3)
        body = b"done\n"
        if self.path.startswith("/headers"):
            body = "".join(f"{k.lower()}: {v}\n" for k, v in self.headers.items()).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


if __name__ == "__main__":
    srv = Server(("::", int(sys.argv[1])), Handler)
    print("ready", flush=True)
    srv.serve_forever()
