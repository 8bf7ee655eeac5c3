"""What TLS adds to a server, tested from the client's side: the handshake, its clock and its failures, the
cleartext client, close_notify, files through OpenSSL, resumption, rotation, and many handshakes at once.

Every other HTTP test runs through TLS too, against a phase that speaks it (conftest.py starts it with a
certificate and `server.connect()` handshakes); these tests are about what only TLS has. Their clients are
the standard library's `ssl`, trusting the test session's certificate authority (`session_authority()`).
"""

from __future__ import annotations

import hashlib
import os
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, TypeVar

import pytest
import trustme
from sslyze.plugins.scan_commands import ScanCommand
from sslyze.scanner.models import ServerScanRequest, ServerScanStatusEnum
from sslyze.scanner.scan_command_attempt import ScanCommandAttempt, ScanCommandAttemptStatusEnum
from sslyze.scanner.scanner import Scanner
from sslyze.server_setting import ServerNetworkLocation

from conftest import Phase, RunningServer, half_close, require_tool, session_authority
from tools.phases import REPO_ROOT, raise_open_file_limit

pytestmark = pytest.mark.needs("tls")

PROMPTLY_S = 10.0  # a generous bound for what should take milliseconds, on a busy machine
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
LAST_REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def read_answer(stream: socket.socket | BinaryIO) -> bytes:
    """One answer: its head, and its body of Content-Length bytes. From a socket, whatever follows it is lost
    (the buffered reader made here reads ahead): to read several, pass the same `sock.makefile("rb")`."""
    reader = stream.makefile("rb") if isinstance(stream, socket.socket) else stream
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline()
        assert line, f"closed before the end of the head: {head!r}"
        head += line
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head + reader.read(length)


def client_hello() -> bytes:
    """The first flight of a real TLS client (its ClientHello), made by an SSLObject that writes to memory."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = session_authority().client_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """True if the server closes `sock` (end of file or reset) within `seconds`; False if it is still open
    then. A byte from the server fails the test: these clients have not finished a handshake."""
    sock.settimeout(seconds)
    try:
        received = sock.recv(1)
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    assert received == b"", f"the server sent {received!r} to a client before its handshake was done"
    return True


def wait_for(condition: Callable[[], bool], within: float = PROMPTLY_S) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ------------------------------------------------------------------------------------------- handshake


def test_a_tls_client_is_served_and_http11_is_the_protocol_agreed(server: RunningServer) -> None:
    context = session_authority().client_context()
    context.set_alpn_protocols(["h2", "http/1.1"])  # a browser's offer: this server speaks only HTTP/1.1
    with context.wrap_socket(
        socket.create_connection(server.address, timeout=PROMPTLY_S), server_hostname="127.0.0.1"
    ) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        assert sock.version() in {"TLSv1.2", "TLSv1.3"}
        assert sock.compression() is None
        sock.sendall(REQUEST * 2)  # keep-alive and pipelined, through TLS
        answers = sock.makefile("rb")
        assert read_answer(answers).startswith(b"HTTP/1.1 200 OK\r\n")
        assert read_answer(answers).endswith(b"\r\n\r\nHello, World!")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")  # offering them is the point
def test_tls_12_is_served_with_a_modern_cipher_and_older_versions_are_refused(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server()
    twelve = session_authority().client_context()
    twelve.maximum_version = ssl.TLSVersion.TLSv1_2
    with twelve.wrap_socket(
        socket.create_connection(server.address, timeout=PROMPTLY_S), server_hostname="127.0.0.1"
    ) as sock:
        assert sock.version() == "TLSv1.2"
        cipher, _, _ = sock.cipher()  # type: ignore[misc]
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        old = session_authority().client_context()
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer what OpenSSL 3 would refuse itself
        old.minimum_version = old.maximum_version = version
        with pytest.raises(ssl.SSLError), socket.create_connection(server.address, timeout=PROMPTLY_S) as raw:
            old.wrap_socket(raw, server_hostname="127.0.0.1")
    with server.connect() as sock:  # the failed handshakes cost their own connections only
        sock.sendall(REQUEST)
        assert read_answer(sock).startswith(b"HTTP/1.1 200 OK\r\n")
    server.stop()
    failures = [line for line in server.stderr.splitlines() if "TLS handshake failed" in line]
    assert len(failures) == 2, server.stderr  # one line each


def test_a_cleartext_request_on_the_tls_port_gets_a_cleartext_400(server: RunningServer) -> None:
    with socket.create_connection(server.address, timeout=PROMPTLY_S) as sock:
        sock.sendall(REQUEST)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"Connection: close\r\n" in answer and answer.endswith(b"sent to an HTTPS port\n")


def test_a_handshake_that_trickles_is_cut_at_the_handshake_timeout(
    start_server: Callable[..., RunningServer],
) -> None:
    """Slowloris, one layer down: a ClientHello sent a byte at a time, each byte in time for an idle timeout,
    is cut when the handshake's own clock runs out, while other clients are served meanwhile."""
    server = start_server("--handshake-timeout", "1")
    hello = client_hello()
    started = time.monotonic()
    with socket.create_connection(server.address, timeout=PROMPTLY_S) as sock:
        cut = False
        for byte in hello[:-1]:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut = True
                break
            if closed_within(sock, 0.05):
                cut = True
                break
            with server.connect() as bystander:
                bystander.sendall(REQUEST)
                assert read_answer(bystander).startswith(b"HTTP/1.1 200 OK\r\n")
        assert cut, "the whole ClientHello but its last byte was sent, and the connection is still open"
    assert 0.9 < time.monotonic() - started < 1.0 + PROMPTLY_S


def test_a_client_that_never_says_hello_is_closed_at_the_handshake_timeout(
    start_server: Callable[..., RunningServer],
) -> None:
    server = start_server("--handshake-timeout", "0.5")
    started = time.monotonic()
    with socket.create_connection(server.address, timeout=PROMPTLY_S) as sock:
        assert closed_within(sock, PROMPTLY_S)
    assert time.monotonic() - started >= 0.45


def test_abandoned_handshakes_leave_no_descriptor_behind(start_server: Callable[..., RunningServer]) -> None:
    """Clients that leave before, during and after their ClientHello: the server closes every one."""
    server = start_server("--workers", "1")
    with server.connect() as sock:  # warm: every worker has its descriptors open
        sock.sendall(REQUEST)
        read_answer(sock)
    baseline = server.open_fds()
    hello = client_hello()
    for part in (b"", hello[:20], hello):
        for _ in range(100):
            with socket.create_connection(server.address, timeout=PROMPTLY_S) as sock:
                sock.sendall(part)
    assert wait_for(lambda: server.open_fds() <= baseline), f"{server.open_fds()} open, {baseline} before"


# ------------------------------------------------------------------------------------------- close_notify


def test_the_server_says_close_notify_after_its_last_answer(server: RunningServer) -> None:
    """With ragged EOFs not suppressed, a FIN without close_notify would raise SSLEOFError here: the end of
    the stream is TLS's own, so the client knows the answer is whole."""
    context = session_authority().client_context()
    raw = socket.create_connection(server.address, timeout=PROMPTLY_S)
    with context.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False) as sock:
        sock.sendall(LAST_REQUEST)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"Hello, World!")


def test_a_client_close_notify_is_answered_with_the_servers_own(server: RunningServer) -> None:
    with server.connect() as sock:
        sock.sendall(REQUEST)
        read_answer(sock)
        assert isinstance(sock, ssl.SSLSocket)
        plain = sock.unwrap()  # sends ours, then blocks until the server's arrives: a timeout fails here
        assert plain.recv(1) == b""  # and nothing after it: the server closed


def test_a_client_that_vanishes_without_close_notify_costs_only_its_connection(server: RunningServer) -> None:
    for request in (b"", REQUEST[:10], REQUEST):  # gone after the handshake, mid-request, before the answer
        sock = server.connect()
        sock.sendall(request)
        sock.close()  # a FIN, no close_notify: a ragged end of stream
    with server.connect() as sock:
        sock.sendall(REQUEST)
        assert read_answer(sock).startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_client_that_stops_sending_without_close_notify_gets_its_answers_and_a_clean_end(
    server: RunningServer,
) -> None:
    """A TCP half-close with no close_notify first (a "ragged" end of the client's stream): the server
    answers what it has, then ends its own stream with a close_notify. OpenSSL 3 makes such an end a fatal
    error unless told otherwise (OP_IGNORE_UNEXPECTED_EOF), and the client then got an alert, not answers."""
    context = session_authority().client_context()
    raw = socket.create_connection(server.address, timeout=PROMPTLY_S)
    with context.wrap_socket(raw, server_hostname="127.0.0.1", suppress_ragged_eofs=False) as sock:
        sock.sendall(REQUEST * 2 + REQUEST[:10])  # two whole requests, and the start of a third
        half_close(sock)
        answer = b""
        while chunk := sock.recv(65536):  # a ragged end of the server's stream would raise here
            answer += chunk
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2 and answer.endswith(b"Hello, World!")


def test_a_record_larger_than_the_room_it_is_read_into_is_read_whole(server: RunningServer) -> None:
    """A partial request waits in its parser's own 16 KiB buffer, leaving less room than the next record
    holds: OpenSSL keeps the rest of that record's plaintext, out of epoll's sight. Read while `pending()`
    says so, it is all there; left, the body would wait for bytes that already came, until its timeout."""
    body = os.urandom(10 * 1024 + 16 * 1024)
    head = b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n" % len(body)
    with server.connect(timeout=5) as sock:
        sock.sendall(head + body[: 10 * 1024])  # one record: the head and 10 KiB, kept by the parser
        time.sleep(0.2)
        sock.sendall(body[10 * 1024 :])  # one record of 16 KiB, into what room is left
        answer = read_answer(sock)  # a timeout here: the rest of the record never came out of OpenSSL
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(body)


# ------------------------------------------------------------------------------------------- files


def test_a_large_file_reaches_a_slow_reader_whole_with_bounded_memory(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """sendfile cannot encrypt: the file goes through OpenSSL a record at a time, and only while the client
    reads. A reader that pauses holds the server to what the socket buffers, not the file's 50 MiB."""
    size = 50 * 2**20
    (tmp_path / "big.bin").write_bytes(os.urandom(2**20) * 50)
    server = start_server("--workers", "1", "--static-dir", str(tmp_path))
    with server.connect() as sock:
        sock.sendall(b"GET /static/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        received = sock.recv(65536)
        before = server.rss_bytes()
        time.sleep(1.0)  # the reader pauses: the server must stop at what the socket holds
        grown = server.rss_bytes() - before
        digest = hashlib.sha256()
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        digest.update(body)
        count = len(body)
        while count < size:
            chunk = sock.recv(1 << 20)
            assert chunk, f"closed after {count:,} of {size:,} bytes"
            digest.update(chunk)
            count += len(chunk)
    assert digest.hexdigest() == hashlib.sha256((tmp_path / "big.bin").read_bytes()).hexdigest()
    assert grown < 8 * 2**20, f"the server grew {grown:,} bytes while its reader paused"


# ------------------------------------------------------------------------------------------- workers


def test_one_worker_resumes_the_session_it_issued(start_server: Callable[..., RunningServer]) -> None:
    """A TLS 1.3 ticket works with the context that issued it: one worker, one context, so every
    resumption succeeds (the chapter measures what two workers, two contexts, cost)."""
    server = start_server("--workers", "1")
    context = session_authority().client_context()
    with context.wrap_socket(socket.create_connection(server.address), server_hostname="127.0.0.1") as first:
        first.sendall(REQUEST)
        read_answer(first)  # the tickets come after the handshake: reading processes them
        session = first.session
        assert not first.session_reused
    with context.wrap_socket(
        socket.create_connection(server.address), server_hostname="127.0.0.1", session=session
    ) as second:
        second.sendall(REQUEST)
        assert read_answer(second).startswith(b"HTTP/1.1 200 OK\r\n")
        assert second.session_reused


def test_a_rotated_certificate_is_served_after_sighup_and_no_request_fails(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """Replace the certificate's files, send SIGHUP: the rolling restart starts workers that read the new
    files, while clients that keep connecting are all served, by one certificate or the other."""
    authority = session_authority()
    certificate_file, key_file = tmp_path / "server.pem", tmp_path / "server.key"
    shutil.copy(authority.certificate_file, certificate_file)
    shutil.copy(authority.key_file, key_file)
    server = start_server("--tls-cert", str(certificate_file), "--tls-key", str(key_file))
    server.client_tls = authority.client_context()
    with server.connect() as sock:
        old = sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
    failures: list[str] = []
    seen: set[bytes] = set()
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            try:
                with server.connect() as sock:
                    seen.add(sock.getpeercert(binary_form=True))  # type: ignore[attr-defined]
                    sock.sendall(LAST_REQUEST)
                    assert read_answer(sock).startswith(b"HTTP/1.1 200 OK\r\n")
            except (OSError, AssertionError) as error:
                failures.append(repr(error))

    clients = [threading.Thread(target=keep_asking) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        renewed = authority.authority.issue_cert("127.0.0.1", "localhost")
        renewed.cert_chain_pems[0].write_to_path(str(certificate_file))
        renewed.private_key_pem.write_to_path(str(key_file))
        os.kill(server.pid, signal.SIGHUP)
        new = ssl.PEM_cert_to_DER_cert(renewed.cert_chain_pems[0].bytes().decode())
        assert wait_for(lambda: new in seen, within=30), "no client was given the new certificate"
        time.sleep(0.5)  # and clients go on through the old set's drain
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert old != new and old in seen
    assert failures == []


# ------------------------------------------------------------------------------------------- many


def test_two_thousand_handshakes_at_once_are_all_completed_and_served(
    start_server: Callable[..., RunningServer],
) -> None:
    """2,000 clients open their connections and start their handshakes together, driven by one selector
    here: every one gets through its handshake and its answer."""
    raise_open_file_limit()
    server = start_server()
    context = session_authority().client_context()
    selector = selectors.DefaultSelector()
    waiting = 2_000
    answers: dict[int, bytes] = {}
    for _ in range(waiting):
        raw = socket.create_connection(server.address, timeout=PROMPTLY_S)
        raw.setblocking(False)
        sock = context.wrap_socket(raw, server_hostname="127.0.0.1", do_handshake_on_connect=False)
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, "handshake")
    deadline = time.monotonic() + 60
    while waiting and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1):
            client = key.fileobj
            assert isinstance(client, ssl.SSLSocket)
            try:
                if key.data == "handshake":
                    client.do_handshake()
                    client.sendall(LAST_REQUEST)
                    selector.modify(client, selectors.EVENT_READ, "answer")
                    continue
                chunk = client.recv(65536)
            except ssl.SSLWantReadError:
                selector.modify(client, selectors.EVENT_READ, key.data)
                continue
            except ssl.SSLWantWriteError:
                selector.modify(client, selectors.EVENT_WRITE, key.data)
                continue
            answers[client.fileno()] = answers.get(client.fileno(), b"") + chunk
            if not chunk:
                selector.unregister(client)
                client.close()
                waiting -= 1
    served = sum(
        answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"Hello, World!")
        for answer in answers.values()
    )
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    assert waiting == 0 and served == 2_000, f"{waiting} still waiting, {served} served"


# ------------------------------------------------------------------------------------------- scan


Result = TypeVar("Result")


def completed(attempt: ScanCommandAttempt[Result]) -> Result:
    """The result of a scan command that sslyze completed."""
    assert attempt.result is not None, attempt.error_trace
    return attempt.result


def test_sslyze_finds_no_old_version_weak_suite_compression_or_known_attack(server: RunningServer) -> None:
    """sslyze, a TLS scanner, run against the server as an auditor would: no SSL 2 or 3, TLS 1.0 or 1.1; every
    TLS 1.2 suite accepted is ECDHE with authenticated encryption; no compression (CRIME), no client-initiated
    renegotiation; not vulnerable to Heartbleed, ROBOT or the CCS injection."""
    commands = {
        ScanCommand.SSL_2_0_CIPHER_SUITES,
        ScanCommand.SSL_3_0_CIPHER_SUITES,
        ScanCommand.TLS_1_0_CIPHER_SUITES,
        ScanCommand.TLS_1_1_CIPHER_SUITES,
        ScanCommand.TLS_1_2_CIPHER_SUITES,
        ScanCommand.TLS_1_3_CIPHER_SUITES,
        ScanCommand.TLS_COMPRESSION,
        ScanCommand.SESSION_RENEGOTIATION,
        ScanCommand.HEARTBLEED,
        ScanCommand.ROBOT,
        ScanCommand.OPENSSL_CCS_INJECTION,
    }
    location = ServerNetworkLocation(hostname="localhost", port=server.port, ip_address=server.host)
    scanner = Scanner()
    scanner.queue_scans([ServerScanRequest(server_location=location, scan_commands=commands)])
    (result,) = scanner.get_results()
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    scan = result.scan_result
    assert scan is not None
    for command in commands:
        attempt = getattr(scan, command.value)
        assert attempt.status == ScanCommandAttemptStatusEnum.COMPLETED, (command, attempt.error_trace)
    old = (
        scan.ssl_2_0_cipher_suites,
        scan.ssl_3_0_cipher_suites,
        scan.tls_1_0_cipher_suites,
        scan.tls_1_1_cipher_suites,
    )
    assert [completed(attempt).accepted_cipher_suites for attempt in old] == [[], [], [], []]
    twelve = [
        accepted.cipher_suite.openssl_name
        for accepted in completed(scan.tls_1_2_cipher_suites).accepted_cipher_suites
    ]
    assert twelve and all(
        name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name) for name in twelve
    ), twelve
    assert completed(scan.tls_1_3_cipher_suites).accepted_cipher_suites
    assert not completed(scan.tls_compression).supports_compression
    assert not completed(scan.session_renegotiation).is_vulnerable_to_client_renegotiation_dos
    assert not completed(scan.heartbleed).is_vulnerable_to_heartbleed
    assert not completed(scan.openssl_ccs_injection).is_vulnerable_to_ccs_injection
    # The server has no RSA key to attack (an ECDSA certificate), or does not act as an oracle with one.
    assert completed(scan.robot).robot_result.value in {
        "NOT_VULNERABLE_RSA_NOT_SUPPORTED",
        "NOT_VULNERABLE_NO_ORACLE",
    }


# ------------------------------------------------------------------------------------------- start-up


def test_make_cert_gives_a_certificate_that_the_printed_curl_line_trusts(
    phase: Phase, tmp_path: Path
) -> None:
    """The chapter's first commands: `make cert`, the server on its files, and the curl line `make cert`
    prints, here in a copy of the Makefile so that a reader's own certs/ is left alone."""
    curl = require_tool("curl")
    require_tool("openssl")
    shutil.copy(REPO_ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")  # the Makefile reads its hash
    made = subprocess.run(
        ["make", "-s", "cert", "PORT=8443"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    printed = made.stdout.strip().splitlines()[-1].split("#")[0].split()
    assert printed[:3] == ["curl", "--cacert", "certs/ca.pem"] and printed[3] == "https://localhost:8443/", (
        made.stdout
    )
    certs = tmp_path / "certs"
    server = RunningServer(
        phase.name,
        "--tls-cert",
        str(certs / "server.pem"),
        "--tls-key",
        str(certs / "server.key"),
        root=phase.root,
    )
    try:
        url = f"https://localhost:{server.port}/"
        fetched = subprocess.run(
            [curl, "--silent", "--show-error", "--cacert", str(certs / "ca.pem"), url],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert fetched.stdout == "Hello, World!", fetched.stderr
        for name in ("server.key", "ca.key"):
            assert (certs / name).stat().st_mode & 0o077 == 0, f"{name} can be read by others"
    finally:
        server.stop()


@pytest.mark.parametrize("problem", ["missing", "not a certificate", "another key"])
def test_a_certificate_that_cannot_serve_is_one_line_and_exit_2(
    phase: Phase, tmp_path: Path, problem: str
) -> None:
    authority = session_authority()
    certificate, key = authority.certificate_file, authority.key_file
    if problem == "missing":
        certificate = tmp_path / "nowhere.pem"
    elif problem == "not a certificate":
        certificate = tmp_path / "empty.pem"
        certificate.write_text("")
    else:
        key = tmp_path / "other.key"
        trustme.CA().issue_cert("127.0.0.1").private_key_pem.write_to_path(str(key))
    command = [
        sys.executable,
        "-m",
        phase.name,
        "--port",
        "0",
        "--tls-cert",
        str(certificate),
        "--tls-key",
        str(key),
    ]
    result = subprocess.run(
        command, cwd=phase.root, capture_output=True, text=True, timeout=PROMPTLY_S, check=False
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --tls-cert "), result.stderr
