"""Hello world on the standard library's http.server: ThreadingHTTPServer, one thread per connection.

Three settings differ from the defaults, as any deployment would set them: HTTP/1.1 (the default handler
speaks HTTP/1.0 and closes every connection); a buffered writer, so each response leaves in one send() (the
default writes the head and the body separately, and Nagle's algorithm then holds the body until the client's
delayed ACK, about 40 ms); and a listen backlog of 2048 like the other peers (the default, 5, drops
connections as soon as a few hundred clients arrive together).

Usage: python -m bench.peers.stdlib_app --host 127.0.0.1 --port 8080
"""

import argparse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = b"Hello, World!"


class HelloHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 64 * 1024  # handle_one_request() flushes it once the response is complete

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:  # no access log, like every target
        pass


class HelloServer(ThreadingHTTPServer):
    request_queue_size = 2048
    daemon_threads = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    options = parser.parse_args()
    with HelloServer((options.host, options.port), HelloHandler) as server:
        print(f"listening on {options.host}:{server.server_port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
