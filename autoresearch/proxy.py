"""
The sandboxed coding CLI's only way out: an allow-listing HTTPS CONNECT proxy.

The `claude`/`codex` CLI runs in bubblewrap with a network namespace of its own (nothing of the
host's network, its localhost services or abstract unix sockets is reachable), yet it must call its
API. So, for the length of one proposal, the harness runs `ConnectProxy` on the host, listening on a
unix socket in a private folder, which is bound into the sandbox; inside, `relay` (this file, run by
the harness's own interpreter with `-I -S`: the standard library only) listens on 127.0.0.1, forwards
each connection byte for byte to that socket, and runs the CLI with HTTPS_PROXY pointing at itself.

The proxy answers only `CONNECT host:port` for a (host, port) of its allow-list: an HTTPS tunnel to
the CLI's API. Everything else is refused (403 for a host not allowed, 405 for any other method: no
plain-HTTP forwarding), so the CLI cannot download the validation split from its public source. It
holds at most MAX_CONNECTIONS tunnels at once, gives a client HANDSHAKE_TIMEOUT seconds to ask, and
closes a tunnel idle for IDLE_TIMEOUT seconds. Where the user's own HTTPS_PROXY names an http://
proxy (with user:password or not), tunnels are chained through it (`CONNECT` there), except for the
hosts its NO_PROXY names; another scheme (https://, socks5://) is refused with one line (ValueError).

What the allow-list cannot stop: what goes through an allowed tunnel is TLS the proxy does not read,
so an API that fetches the web itself (a server-side web-fetch tool) is a way out this proxy cannot see.
"""

import base64
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading

MAX_CONNECTIONS = 16     # tunnels open at once; one more is answered 503
HANDSHAKE_TIMEOUT = 15   # seconds for a client to send its CONNECT, and for an upstream to answer
IDLE_TIMEOUT = 600       # seconds a tunnel may carry nothing (a streamed reply pauses, never this long)
HEAD_LIMIT = 8192        # bytes of a request's head
BUFFER = 65536
MAX_REFUSED = 32         # refused targets remembered for the user's error message
# what the CLI inside is told: the relay's address for HTTPS and HTTP, and no exception
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")
NO_PROXY_VARIABLES = ("NO_PROXY", "no_proxy")
DROPPED_VARIABLES = ("ALL_PROXY", "all_proxy")


# -- both sides ----------------------------------------------------------------------------------
def pipe(a, b, idle=IDLE_TIMEOUT):
    """Copy bytes both ways between sockets a and b until both directions have ended (each end's EOF
    is passed on as a half-close, as TLS needs), either fails, or nothing moved for idle seconds; then
    close both."""
    a.settimeout(idle)  # a peer that stops reading stalls sendall: it times out too
    b.settimeout(idle)
    peers = {a: b, b: a}
    with selectors.DefaultSelector() as selector:
        for s in peers:
            selector.register(s, selectors.EVENT_READ)
        reading = 2
        try:
            while reading:
                ready = selector.select(idle)
                if not ready:
                    break
                for key, _ in ready:
                    data = key.fileobj.recv(BUFFER)
                    if data:
                        peers[key.fileobj].sendall(data)
                        continue
                    selector.unregister(key.fileobj)
                    reading -= 1
                    try:
                        peers[key.fileobj].shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
        except OSError:
            pass
        finally:
            a.close()
            b.close()


def read_head(sock, limit=HEAD_LIMIT):
    """(the head of an HTTP message up to its blank line, the bytes read past it); ValueError when it
    is longer than limit or the peer ends before it."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > limit:
            raise ValueError("request head too long")
        chunk = sock.recv(4096)
        if not chunk:
            raise ValueError("connection closed before the end of the request head")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    if len(head) > limit:
        raise ValueError("request head too long")
    return head.decode("latin-1"), rest


def parse_target(text, default_port=None):
    """(host, port) of "host:port", "[v6 address]:port", or "host" with default_port; the host
    lowercase and without a trailing dot, as it is compared with the allow-list. ValueError else."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]")
        port = port[1:] if port.startswith(":") else ("" if not port else None)
        if not sep or port is None:
            raise ValueError(f"{text!r} is not host:port")
    elif text.count(":") == 1:
        host, port = text.split(":")
    elif ":" in text:
        raise ValueError(f"{text!r} is not host:port (write an IPv6 address in brackets)")
    else:
        host, port = text, ""
    host = host.lower().rstrip(".")
    allowed_chars = set("abcdefghijklmnopqrstuvwxyz0123456789.-_:")
    if not host or len(host) > 253 or not set(host) <= allowed_chars:  # 253: DNS's longest name
        raise ValueError(f"{text!r} has no valid host name")
    if not port:
        if default_port is None:
            raise ValueError(f"{text!r} has no port")
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} has no valid port")
    return host, int(port)


def format_target(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- the host side -------------------------------------------------------------------------------
def upstream_proxy(environ=None):
    """The user's own proxy to chain tunnels through: (host, port, Proxy-Authorization value or None,
    the NO_PROXY hosts' text), or None. ValueError (one line) for a scheme other than http://."""
    environ = os.environ if environ is None else environ
    url = environ.get("https_proxy") or environ.get("HTTPS_PROXY")
    if not url:
        return None
    from urllib.parse import unquote, urlsplit
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"HTTPS_PROXY={url} is not an http:// proxy, the only kind the coding CLI's sandbox "
                         f"proxy can chain through: use an http:// proxy, or unset HTTPS_PROXY")
    auth = None
    if parts.username is not None:
        pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode()
    return parts.hostname, parts.port or 80, auth, environ.get("no_proxy") or environ.get("NO_PROXY") or ""


def bypasses(host, no_proxy):
    """Whether NO_PROXY's text (comma-separated names, a leading dot or not; "*" for all) names host."""
    for entry in (e.strip().lower().lstrip(".") for e in no_proxy.split(",")):
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return True
    return False


class ConnectProxy:
    """The allow-listing CONNECT proxy, on a unix socket in a private folder (`path`), from start() to
    stop() (or as a context manager). `refused` lists what it turned away, for the user's error message."""

    def __init__(self, allowed, upstream=None, max_connections=MAX_CONNECTIONS, idle=IDLE_TIMEOUT,
                 handshake=HANDSHAKE_TIMEOUT):
        self.allowed = frozenset(allowed)
        self.upstream = upstream
        self.idle, self.handshake = idle, handshake
        self.refused = []
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open = set()  # sockets of live connections: stop() shuts them down
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = []  # the connections'
        self.folder = self.path = self._listener = self._acceptor = None

    def start(self):
        self.folder = tempfile.mkdtemp(prefix="autoresearch-proxy-")  # 0700: only this user connects
        self.path = os.path.join(self.folder, "proxy.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(64)
        self._listener.settimeout(0.2)  # accept() wakes to see stop()
        self._acceptor = threading.Thread(target=self._accept, name="autoresearch-proxy", daemon=True)
        self._acceptor.start()
        return self

    def stop(self):
        """Close the listener and every tunnel (the CLI has exited, or is being killed)."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join(timeout=5)  # no connection is accepted past this
        with self._lock:
            for s in self._open:
                try:
                    s.shutdown(socket.SHUT_RDWR)  # wakes the thread that waits on it; it closes it
                except OSError:
                    pass
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        if self.folder:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *_):
        self.stop()

    def _accept(self):
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            if not self._slots.acquire(blocking=False):
                self._answer(client, 503, "too many connections through the sandbox's proxy")
                client.close()
                continue
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _track(self, s):
        with self._lock:
            self._open.add(s)
            if self._stopping.is_set():  # stop() came between accept and here
                s.shutdown(socket.SHUT_RDWR)

    def _serve(self, client):
        upstream = None
        try:
            self._track(client)
            client.settimeout(self.handshake)
            try:
                head, rest = read_head(client)
            except (ValueError, OSError):
                return self._answer(client, 400, "no request")
            method, _, target = head.split("\r\n", 1)[0].partition(" ")
            target = target.rsplit(" ", 1)[0] if " " in target else target
            if method != "CONNECT":
                return self._answer(client, 405, "the sandbox's proxy only opens HTTPS tunnels (CONNECT)")
            try:
                host, port = parse_target(target)
            except ValueError as e:
                return self._answer(client, 400, str(e))
            if (host, port) not in self.allowed:
                if len(self.refused) < MAX_REFUSED:  # enough to name what to allow; a flood of them is not kept
                    self.refused.append(format_target(host, port))
                return self._answer(client, 403, f"{format_target(host, port)} is not among the hosts the "
                                                 f"sandbox allows (AUTORESEARCH_PROXY_ALLOW adds one)")
            try:
                upstream, early = self._open_upstream(host, port)
            except (OSError, ValueError) as e:
                return self._answer(client, 502, f"cannot reach {format_target(host, port)}: {e}")
            self._track(upstream)
            client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            if early:
                client.sendall(early)
            if rest:
                upstream.sendall(rest)
            pipe(client, upstream, self.idle)
        except OSError:
            pass
        finally:
            for s in (client, upstream):
                if s is not None:
                    with self._lock:
                        self._open.discard(s)
                    s.close()
            self._slots.release()

    def _open_upstream(self, host, port):
        """(a socket connected to host:port, directly or through the user's proxy; bytes the proxy sent
        past its answer)."""
        if self.upstream is None or bypasses(host, self.upstream[3]):
            return socket.create_connection((host, port), timeout=self.handshake), b""
        proxy_host, proxy_port, auth, _ = self.upstream
        sock = socket.create_connection((proxy_host, proxy_port), timeout=self.handshake)
        try:
            target = format_target(host, port)
            request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
            if auth:
                request += f"Proxy-Authorization: {auth}\r\n"
            sock.sendall((request + "\r\n").encode("latin-1"))
            head, rest = read_head(sock, 16384)
            status = head.split("\r\n", 1)[0]
            if status.split(" ")[1:2] != ["200"]:
                raise ValueError(f"the proxy {proxy_host}:{proxy_port} answered {status!r}")
            return sock, rest
        except BaseException:
            sock.close()
            raise

    @staticmethod
    def _answer(client, status, reason):
        titles = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed", 502: "Bad Gateway",
                  503: "Service Unavailable"}
        body = (reason + "\n").encode("utf-8", "replace")
        try:
            client.settimeout(1)
            client.sendall(f"HTTP/1.1 {status} {titles[status]}\r\nContent-Type: text/plain\r\nContent-Length: "
                           f"{len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        except OSError:
            pass


# -- inside the sandbox --------------------------------------------------------------------------
def _forward(listener, socket_path):
    """Accept on listener for ever, each connection piped to a new one to the proxy's unix socket."""
    while True:
        client, _ = listener.accept()
        threading.Thread(target=_forward_one, args=(client, socket_path), daemon=True).start()


def _forward_one(client, socket_path):
    upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        upstream.connect(socket_path)
    except OSError:
        upstream.close()
        client.close()
        return
    pipe(client, upstream)


def relay(socket_path, argv):
    """Listen on 127.0.0.1 (any port), forward each connection to socket_path, run argv with the
    proxy variables naming that address, and return its exit status (128 + N for signal N, as a
    shell does). SIGTERM, SIGINT and SIGHUP are passed on to it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    address = f"http://127.0.0.1:{listener.getsockname()[1]}"
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_VARIABLES}
    env.update({name: address for name in PROXY_VARIABLES})
    env.update({name: "" for name in NO_PROXY_VARIABLES})
    threading.Thread(target=_forward, args=(listener, socket_path), daemon=True).start()
    try:
        child = subprocess.Popen(argv, env=env)
    except OSError as e:
        print(f"autoresearch relay: cannot run {argv[0]}: {e.strerror}", file=sys.stderr)
        return 127
    for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(number, lambda signum, _frame: child.send_signal(signum))
    code = child.wait()
    return code if code >= 0 else 128 - code


def main(args):
    """`proxy.py relay SOCKET -- PROGRAM ARGS...`: what the sandbox runs."""
    if len(args) < 4 or args[0] != "relay" or args[2] != "--":
        print("usage: proxy.py relay SOCKET -- PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    return relay(args[1], args[3:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
