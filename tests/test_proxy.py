"""The coding CLI's way out of its sandbox (autoresearch/proxy.py): the allow-listing CONNECT proxy
on the host and the relay inside, tested here without a sandbox, against servers on loopback."""

import base64
import os
import socket
import socketserver
import subprocess
import sys
import threading
import time

import pytest

from autoresearch import proxy


class Echo(socketserver.ThreadingTCPServer):
    """A TCP server on 127.0.0.1 that answers each chunk with b"echo:" + the chunk."""
    daemon_threads = allow_reuse_address = True

    def __init__(self):
        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                while data := self.request.recv(4096):
                    self.request.sendall(b"echo:" + data)
        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    def __exit__(self, *args):
        self.shutdown()
        super().__exit__(*args)


def head_of(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0].decode(), data.partition(b"\r\n\r\n")[2]


def received(sock, rest, size):
    """size bytes from sock, counting those already read past an answer's head."""
    while len(rest) < size:
        rest += sock.recv(size - len(rest))
    return rest


def ask(path, request):
    """(status line, the rest, the socket) of a request sent to the proxy's unix socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    try:
        sock.sendall(request)
    except BrokenPipeError:  # answered (503) and closed before reading: the answer is still there
        pass
    status, rest = head_of(sock)
    return status, rest, sock


@pytest.fixture
def echo():
    with Echo() as server:
        yield server


def test_connect_to_an_allowed_host_carries_bytes_both_ways(echo):
    with proxy.ConnectProxy({("127.0.0.1", echo.port)}) as gate:
        # a client may send its first bytes (a TLS ClientHello) right behind the CONNECT
        status, rest, sock = ask(gate.path, f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n\r\nhello".encode())
        assert status == "HTTP/1.1 200 Connection Established"
        assert received(sock, rest, 10) == b"echo:hello"
        sock.sendall(b"again")
        assert received(sock, b"", 10) == b"echo:again"
        sock.close()
        assert gate.refused == []


@pytest.mark.parametrize("target", ["example.com:443", "127.0.0.1:{other}", "localhost:{port}", "127.0.0.1:443"])
def test_a_host_not_allowed_is_refused_with_403(target, echo):
    with Echo() as other, proxy.ConnectProxy({("127.0.0.1", echo.port)}) as gate:
        target = target.format(other=other.port, port=echo.port)
        status, body, _ = ask(gate.path, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert status == "HTTP/1.1 403 Forbidden" and b"AUTORESEARCH_PROXY_ALLOW" in body
        assert gate.refused == [target]


def test_what_a_flood_of_refused_requests_leaves_in_the_harness_is_bounded(echo):
    """Each refusal is remembered for the user's error message: a CLI asking for a million long names
    would fill the harness's memory."""
    with proxy.ConnectProxy({("127.0.0.1", echo.port)}) as gate:
        for k in range(proxy.MAX_REFUSED + 10):
            assert ask(gate.path, f"CONNECT host{k}.example:443 HTTP/1.1\r\n\r\n".encode())[0] == "HTTP/1.1 403 Forbidden"
        too_long = "a" * 254 + ".example:443"
        assert ask(gate.path, f"CONNECT {too_long} HTTP/1.1\r\n\r\n".encode())[0] == "HTTP/1.1 400 Bad Request"
        assert len(gate.refused) == proxy.MAX_REFUSED


@pytest.mark.parametrize("request_line", [b"GET http://127.0.0.1:{port}/ HTTP/1.1", b"POST / HTTP/1.1",
                                          b"GET / HTTP/1.1"])
def test_plain_http_is_never_forwarded(request_line, echo):
    with proxy.ConnectProxy({("127.0.0.1", echo.port)}) as gate:
        status, body, _ = ask(gate.path, request_line.replace(b"{port}", str(echo.port).encode()) + b"\r\n\r\n")
        assert status == "HTTP/1.1 405 Method Not Allowed" and b"only opens HTTPS tunnels" in body


def test_a_malformed_silent_or_endless_request_is_answered_400(echo):
    with proxy.ConnectProxy({("127.0.0.1", echo.port)}, handshake=0.5) as gate:
        assert ask(gate.path, b"CONNECT nohost HTTP/1.1\r\n\r\n")[0] == "HTTP/1.1 400 Bad Request"
        assert ask(gate.path, b"CONNECT [::1:443 HTTP/1.1\r\n\r\n")[0] == "HTTP/1.1 400 Bad Request"
        start = time.time()
        assert ask(gate.path, b"CONNECT 127.0.0.1")[0] == "HTTP/1.1 400 Bad Request"  # never finishes its head
        assert time.time() - start < 5
        assert ask(gate.path, b"X" * (proxy.HEAD_LIMIT + 10))[0] == "HTTP/1.1 400 Bad Request"


def test_connections_past_the_limit_are_answered_503_and_a_closed_one_frees_its_slot(echo):
    with proxy.ConnectProxy({("127.0.0.1", echo.port)}, max_connections=1) as gate:
        connect = f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n\r\n".encode()
        status, _, first = ask(gate.path, connect)
        assert status.endswith("200 Connection Established")
        assert ask(gate.path, connect)[0] == "HTTP/1.1 503 Service Unavailable"
        first.close()
        for _ in range(50):  # the tunnel's thread sees the close and gives its slot back
            status, _, sock = ask(gate.path, connect)
            sock.close()
            if "200" in status:
                break
            time.sleep(0.05)
        assert "200" in status


def test_stop_and_idleness_close_open_tunnels(echo):
    connect = f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n\r\n".encode()
    with proxy.ConnectProxy({("127.0.0.1", echo.port)}, idle=0.5) as gate:
        _, _, idle = ask(gate.path, connect)
        start = time.time()
        assert idle.recv(100) == b"" and time.time() - start < 5  # closed after half a second of nothing
    gate = proxy.ConnectProxy({("127.0.0.1", echo.port)}).start()
    _, _, open_tunnel = ask(gate.path, connect)
    start = time.time()
    gate.stop()
    assert open_tunnel.recv(100) == b"" and time.time() - start < 5
    assert not os.path.exists(gate.folder)


class UpstreamProxy(threading.Thread):
    """The user's own proxy: answers one CONNECT with 200 (recording its head), then echoes."""

    def __init__(self, answer=b"HTTP/1.1 200 OK\r\n\r\n"):
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port, self.answer, self.heads = self.server.getsockname()[1], answer, []
        self.start()

    def run(self):
        while True:
            conn, _ = self.server.accept()
            head, _ = proxy.read_head(conn)
            self.heads.append(head)
            conn.sendall(self.answer)
            while data := conn.recv(4096):
                conn.sendall(b"upstream:" + data)
            conn.close()


def test_tunnels_chain_through_the_users_http_proxy_with_its_credentials(echo):
    upstream = UpstreamProxy()
    settings = proxy.upstream_proxy({"HTTPS_PROXY": f"http://alice:p%40ss@127.0.0.1:{upstream.port}",
                                     "NO_PROXY": "localhost,.internal"})
    with proxy.ConnectProxy({("api.example.com", 443), ("localhost", echo.port)}, upstream=settings) as gate:
        status, rest, sock = ask(gate.path, b"CONNECT api.example.com:443 HTTP/1.1\r\n\r\n")
        assert status.endswith("200 Connection Established")
        sock.sendall(b"hi")
        assert received(sock, rest, 11) == b"upstream:hi"
        [head] = upstream.heads
        assert head.startswith("CONNECT api.example.com:443 HTTP/1.1\r\n")
        assert f"Proxy-Authorization: Basic {base64.b64encode(b'alice:p@ss').decode()}" in head
        # a host NO_PROXY names is reached directly
        status, rest, sock = ask(gate.path, f"CONNECT localhost:{echo.port} HTTP/1.1\r\n\r\nhey".encode())
        assert status.endswith("200 Connection Established") and received(sock, rest, 8) == b"echo:hey"


def test_an_upstream_that_refuses_is_a_502():
    upstream = UpstreamProxy(answer=b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
    settings = proxy.upstream_proxy({"https_proxy": f"127.0.0.1:{upstream.port}"})
    with proxy.ConnectProxy({("api.example.com", 443)}, upstream=settings) as gate:
        status, body, _ = ask(gate.path, b"CONNECT api.example.com:443 HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 502 Bad Gateway" and b"407" in body


def test_only_an_http_upstream_proxy_is_chained():
    assert proxy.upstream_proxy({}) is None
    with pytest.raises(ValueError, match="socks5://h:1 is not an http:// proxy.*unset HTTPS_PROXY"):
        proxy.upstream_proxy({"HTTPS_PROXY": "socks5://h:1"})


def test_targets_parse_as_the_allow_list_compares_them():
    assert proxy.parse_target("API.Anthropic.com.:443") == ("api.anthropic.com", 443)
    assert proxy.parse_target("[::1]:8443") == ("::1", 8443)
    assert proxy.parse_target("example.com", 443) == ("example.com", 443)
    for bad in ("example.com", "a b:443", "host:0", "host:99999", "::1:443", "[::1", ":443"):
        with pytest.raises(ValueError):
            proxy.parse_target(bad)
    assert proxy.bypasses("a.internal", "localhost, .internal") and not proxy.bypasses("internal.com", ".internal")


CLIENT = """
import os, socket, sys
from urllib.parse import urlsplit
url = urlsplit(os.environ["HTTPS_PROXY"])
assert os.environ["HTTP_PROXY"] == os.environ["https_proxy"] == os.environ["HTTPS_PROXY"]
assert os.environ["NO_PROXY"] == "" and "ALL_PROXY" not in os.environ
s = socket.create_connection((url.hostname, url.port), timeout=10)
s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\\r\\n\\r\\n" % int(sys.argv[1]))
head = b""
while b"\\r\\n\\r\\n" not in head:
    head += s.recv(100)
s.sendall(b"ping")
print(url.hostname, head.split(b"\\r\\n")[0].decode(), s.recv(100).decode())
sys.exit(3)
"""


def test_the_relay_runs_the_program_behind_a_local_address_that_leads_to_the_proxy(echo, monkeypatch):
    monkeypatch.setenv("ALL_PROXY", "socks5://elsewhere:1080")
    with proxy.ConnectProxy({("127.0.0.1", echo.port)}) as gate:
        run = subprocess.run([sys.executable, "-I", "-S", proxy.__file__, "relay", gate.path, "--", sys.executable,
                              "-c", CLIENT, str(echo.port)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 3, run.stderr  # the program's own status
    assert run.stdout.split("\n")[0] == "127.0.0.1 HTTP/1.1 200 Connection Established echo:ping"
    missing = subprocess.run([sys.executable, "-I", "-S", proxy.__file__, "relay", "/nonexistent", "--",
                              "/nonexistent/cli"], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 127 and "cannot run /nonexistent/cli" in missing.stderr
