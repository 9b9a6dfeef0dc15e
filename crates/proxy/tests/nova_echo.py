"""Nova metadata API stand-in on 127.0.0.1 for the proxy's tests (stdlib only).

Usage: python nova_echo.py SECRET. Prints "READY <port>". Answers 200 with JSON
{method, path, query, headers, body, sig_ok}; /empty404 answers 404 with an empty body
(which makes Neutron's agent write a head without the terminating empty line); /crash404
does so without a Content-Type, which makes Neutron's agent fail and close without a reply.
"""
import hashlib
import hmac
import http.server
import json
import sys
import urllib.parse

SECRET = sys.argv[1] if len(sys.argv) > 1 else ""


class Nova(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        url = urllib.parse.urlsplit(self.path)
        if url.path in ("/empty404", "/crash404"):
            self.send_response(404)
            if url.path == "/empty404":
                self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        iid = self.headers.get("X-Instance-ID", "")
        want = hmac.new(SECRET.encode(), iid.encode(), hashlib.sha256).hexdigest()
        out = json.dumps({
            "method": self.command,
            "path": url.path,
            "query": url.query,
            "headers": {k: v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
            "sig_ok": self.headers.get("X-Instance-ID-Signature") == want,
        }).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_HEAD = _answer

    def log_message(self, *args):
        pass


def main():
    nova = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Nova)
    print("READY %d" % nova.server_address[1], flush=True)
    nova.serve_forever()


if __name__ == "__main__":
    main()
