#!/usr/bin/python3
"""Test stand-in for an app's site: HTTPS on 127.0.0.1:PORT with the test CA's certificate for localhost,
answering 200 to every GET (what blackbox_exporter's https_2xx probe checks).

    berth-test-https-site [PORT CERTIFICATE KEY]     # default: 8443 /etc/berth-test-site.crt …key"""

import ssl
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


port, cert, key = sys.argv[1:] or ["8443", "/etc/berth-test-site.crt", "/etc/berth-test-site.key"]
server = HTTPServer(("127.0.0.1", int(port)), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
