#!/usr/bin/env python3
"""An OTLP/HTTP sink for benchmarks: answers 200 to every POST after reading its body, and
counts the bytes (printed on exit). Not a collector: nothing is decoded or kept."""
import http.server
import sys


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    received = 0

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        Sink.received += len(self.rfile.read(n))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Sink)
try:
    server.serve_forever()
finally:
    print(f"received {Sink.received} bytes", flush=True)
