"""TLS for the event loop: the server's context, and how the loop tells a TLS client from a cleartext one.

Theory of operation. A TLS connection is a TCP connection that carries records (RFC 8446 §5): each a 5-byte
header (content type, version, length) and up to 16 KiB of payload, encrypted once the handshake is done.
The handshake is a conversation of several records each way before the first byte of HTTP can be read, so
in an event loop it is connection state, not a call: the loop calls `do_handshake()` whenever the socket is
ready, and OpenSSL says what it waits for (`SSLWantReadError`: bytes from the client; `SSLWantWriteError`:
room in the socket), which is what the loop asks epoll to watch. Once it is done, `recv_into` and `send` on
the `ssl.SSLSocket` move plaintext, and OpenSSL reads and writes the records on the descriptor underneath:
one receive reads at most one record, and a record that has not arrived whole is `SSLWantReadError`, not
bytes, so the loop treats it as EAGAIN. (bench/tls_io.py measures this against `ssl.SSLObject` between two
memory buffers, where the loop moves the records itself; the chapter shows why the socket was kept.)

What this file decides, and where each choice comes from:
  versions   TLS 1.2 and 1.3 only, no SSL 3, TLS 1.0 or 1.1 (RFC 8996 deprecates both).
  ciphers    for TLS 1.2, Mozilla's "intermediate" list (Server Side TLS, json/server-side-tls-conf-5.0.json),
             ECDHE only: its two DHE suites need Diffie-Hellman parameters, which we do not load, and every
             client the list is for speaks ECDHE. TLS 1.3's suites are all AEAD: OpenSSL's default three.
  ALPN       "http/1.1" (RFC 7301): the only protocol this server speaks (phase 9 adds "h2").
  no compression (CRIME) and no renegotiation (a client's cheap way to make the server compute a handshake
             again, and TLS 1.3 has none): OP_NO_COMPRESSION, OP_NO_RENEGOTIATION.
  ragged end a client that closes without close_notify (many do) ends its stream like one that sends it:
             OP_IGNORE_UNEXPECTED_EOF, without which OpenSSL 3 makes it a fatal error of the connection.
  tickets    OpenSSL's default: TLS 1.3 sends two session tickets after a handshake, encrypted with keys
             that live in this context. A worker process makes its own context, so a ticket works only
             with the worker that issued it (the chapter measures what that costs).

A cleartext client on the TLS port is recognised from its first byte, before any TLS: every TLS connection
opens with a handshake record, content type 22 (0x16), and no HTTP method starts with that byte. It gets
nginx's answer, a cleartext 400 saying what happened, and the connection is closed.
"""

import ssl
from pathlib import Path

# --8<-- [start:context]
# RFC 8446 §5.1: ContentType handshake(22). The first byte of every TLS connection, from the ClientHello.
HANDSHAKE_RECORD = 0x16
# Mozilla Server Side TLS 5.0, intermediate, TLS 1.2 (ECDHE suites; see the module docstring for the DHE two).
TLS12_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
ALPN_PROTOCOLS = ["http/1.1"]


def server_context(certificate: Path, key: Path) -> ssl.SSLContext:
    """A server context with the certificate chain in `certificate` and its private key in `key` (PEM).
    Raises OSError for a file that cannot be read, ssl.SSLError for one that is not a certificate or a key,
    or a key that does not match the certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(TLS12_CIPHERS)  # TLS 1.2's list only: TLS 1.3's suites are set apart, left default
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # A client that closes without close_notify (a "ragged" end, as many do) ends its stream as one that
    # says it: OpenSSL 3 would otherwise make it a fatal error, after which not even our close_notify goes.
    context.options |= ssl.OP_IGNORE_UNEXPECTED_EOF
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    context.load_cert_chain(certificate, key)
    return context


# --8<-- [end:context]


# --8<-- [start:cleartext]
def is_tls(first_byte: int) -> bool:
    """Whether a connection's first byte opens a TLS handshake (any HTTP request starts with a letter)."""
    return first_byte == HANDSHAKE_RECORD


# What nginx answers (ngx_http_request.c, NGX_HTTP_TO_HTTPS): a cleartext 400, then the close.
CLEARTEXT_BODY = b"400 Bad Request: a plain HTTP request was sent to an HTTPS port\n"
CLEARTEXT_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(CLEARTEXT_BODY)).encode() + b"\r\n"
    b"Connection: close\r\n"
    b"\r\n" + CLEARTEXT_BODY
)
# --8<-- [end:cleartext]
