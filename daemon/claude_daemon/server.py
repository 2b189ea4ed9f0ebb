"""The HTTP server under the API: gunicorn's gthread worker (HTTP/1.1, keep-alive).

Debian 12's python3-gunicorn (20.1) provides the HTTP/1.1 parser, the
keep-alive bookkeeping and the thread pool. The worker runs inside the
daemon's own process (one process, DAEMON_THREADS request threads), started
and stopped by App.start/App.stop, not under gunicorn's arbiter: the usage
monitor, the SQLite fallback's outbox copy-back and the Prometheus registry
live in that one process, so there is exactly one of each (see
daemon/README.md, "Why one process").

Two things the stock worker does differently are changed here:

- TLS: gunicorn 20.1 wraps each connection with ssl.wrap_socket in its accept
  loop (one slow client stalls every other) and has no way to follow a
  renewed certificate. Here each new connection is wrapped with the
  ReloadingContext's current context (tls.py: stat() per connection, the new
  pair served at the next connection) and its handshake runs in the
  connection's own thread, bounded by DAEMON_TLS_HANDSHAKE_TIMEOUT.
- Errors the parser finds (bad request line, bad header ...) are answered in
  JSON, counted like any refused request, as the daemon always did.
"""

from __future__ import annotations

import collections
import concurrent.futures
import email.utils
import errno
import functools
import http
import logging
import os
import selectors
import socket
import ssl
import sys
import threading
import time

from gunicorn import config as gconfig
from gunicorn.http import RequestParser
from gunicorn.http import errors as gerrors
from gunicorn.workers.gthread import TConn, ThreadWorker

log = logging.getLogger("claude_daemon.http")

SERVER_NAME = "claude-daemon"  # the Server header: no version of anything disclosed

# Methods the API knows; anything else is refused before routing (405, as before).
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _GunicornLog:
    """gunicorn's logger interface, onto the daemon's one-line logging (no access log:
    the API logs each request itself)."""

    def __init__(self):
        self._log = logging.getLogger("claude_daemon.http")

    def __getattr__(self, name):  # debug, info, warning, error, critical
        return getattr(self._log, name)

    def exception(self, msg, *args, **kwargs):
        exc = sys.exc_info()[1]
        if isinstance(exc, (socket.timeout, TimeoutError)):  # a client too slow to send its request
            self._log.info("connection timed out: the client sent no complete request in time")
            return
        self._log.exception(msg, *args, **kwargs)

    def access(self, *args, **kwargs):
        pass

    def reopen_files(self):
        pass

    def close_on_exec(self):
        pass


def gunicorn_settings(cfg):
    """gunicorn's Config for the daemon's Config (DAEMON_THREADS, DAEMON_KEEPALIVE ...)."""
    settings = gconfig.Config()
    settings.set("threads", cfg.http_threads)
    settings.set("keepalive", cfg.http_keepalive)
    settings.set("graceful_timeout", cfg.http_graceful_timeout)
    settings.set("worker_connections", cfg.http_max_connections)
    settings.set("limit_request_line", 8190)  # gunicorn's largest; longer: 414
    settings.set("max_requests", 0)
    return settings


class DaemonConn(TConn):
    """A connection: plain, or TLS with the context current when it was accepted."""

    def __init__(self, worker, sock, client, server):
        super().__init__(worker.cfg, sock, client, server)
        self.worker = worker
        self.handshake_done = worker.tls is None

    def init(self):
        # Called in the accept loop: nothing that can block here.
        self.sock.setblocking(True)
        if self.parser is None:
            # gunicorn writes a response's headers and body in two sends: without
            # this, Nagle's algorithm holds the body back until the client's ACK.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.worker.tls is not None:
                self.sock = self.worker.tls.current().wrap_socket(self.sock, server_side=True,
                                                                  do_handshake_on_connect=False)
            self.parser = RequestParser(self.cfg, self.sock, self.client)
        # A client gets this long for each read (request line, headers, body) and write.
        self.sock.settimeout(self.worker.request_timeout)


class DaemonWorker(ThreadWorker):
    """gthread, embedded: driven by App (no arbiter, no signals of its own)."""

    def __init__(self, listener, wsgi, cfg, app, tls=None, request_timeout=10.0, handshake_timeout=10.0):
        super().__init__(0, os.getppid(), [listener], None, cfg.timeout, cfg, _GunicornLog())
        self.app_obj = app
        self.tls = tls
        self.request_timeout = request_timeout
        self.tls_handshake_timeout = handshake_timeout
        self.wsgi = wsgi
        self._local = threading.local()
        self.tmp.close()  # the arbiter's liveness file: there is no arbiter

    def notify(self):
        pass

    def is_parent_alive(self):
        return True

    def prepare(self):
        self.tpool = concurrent.futures.ThreadPoolExecutor(max_workers=self.cfg.threads,
                                                           thread_name_prefix="http")
        self.poller = selectors.DefaultSelector()
        self._lock = threading.RLock()
        self.pid = os.getpid()
        self.booted = True

    def accept(self, server, listener):
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        conn = DaemonConn(self, sock, client, server)
        self.nr_conns += 1
        # Not handed to a request thread before it has sent something: a client
        # that connects and stays silent holds no thread, only a connection slot,
        # and is closed after the request (or TLS handshake) timeout (murder_keepalived).
        conn.timeout = time.time() + (self.request_timeout if self.tls is None else self.tls_handshake_timeout)
        with self._lock:
            self._keep.append(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ, functools.partial(self.reuse_connection, conn))

    def murder_keepalived(self):
        """Close the waiting connections whose time is up (idle keep-alive ones after
        DAEMON_KEEPALIVE, new silent ones after the request timeout): all of them,
        not only those before the first that is not due (their deadlines differ)."""
        now = time.time()
        with self._lock:
            due = [conn for conn in self._keep if conn.timeout <= now]
            for conn in due:
                self._keep.remove(conn)
                try:
                    self.poller.unregister(conn.sock)
                except (KeyError, ValueError, OSError):
                    pass
        for conn in due:
            self.nr_conns -= 1
            conn.close()

    def current_connection(self):
        return getattr(self._local, "conn", None)

    def handle(self, conn):
        """In a pool thread: the TLS handshake (first time only), then the request."""
        if not conn.handshake_done:
            conn.sock.settimeout(self.tls_handshake_timeout)
            try:
                conn.sock.do_handshake()
            except (ssl.SSLError, OSError) as exc:  # plain HTTP, an old protocol, a stalled or vanished client
                log.info("tls handshake failed client=%s: %s", conn.client[0] if conn.client else "-",
                         getattr(exc, "reason", None) or exc)
                return (False, conn)
            conn.handshake_done = True
            conn.sock.settimeout(self.request_timeout)
        self._local.conn = conn
        try:
            return super().handle(conn)
        finally:
            self._local.conn = None

    def handle_request(self, req, conn):
        if req.version[0] != 1:  # gunicorn's parser takes any HTTP/d.d; HTTP/1.0 and 1.1 only here
            self.handle_error(None, conn.sock, conn.client, gerrors.InvalidHTTPVersion(f"HTTP/{req.version[0]}."
                                                                                        f"{req.version[1]}"))
            return False
        return super().handle_request(req, conn)

    def handle_error(self, req, client, addr, exc):
        """What the parser refused, answered in JSON (never gunicorn's HTML)."""
        if isinstance(exc, (socket.timeout, TimeoutError)):
            return  # a client that stopped sending: the connection is closed
        status, message, bare = parse_error(exc)
        response = self.app_obj.refused(getattr(req, "method", None), status, message,
                                        addr[0] if addr else "-")
        try:
            client.sendall(response.body if bare else raw_response(response))
            _linger(client)
        except OSError:
            pass

    def close_idle(self):
        """Close the keep-alive connections waiting for a next request (after run() ended)."""
        with self._lock:
            idle, self._keep = list(self._keep), collections.deque()
        for conn in idle:
            conn.close()


def raw_response(response):
    """An HTTP/1.1 response that closes the connection, for answers written outside WSGI."""
    phrase = http.HTTPStatus(response.status).phrase
    head = [f"HTTP/1.1 {response.status} {phrase}", f"Server: {SERVER_NAME}",
            f"Date: {email.utils.formatdate(usegmt=True)}", "Connection: close",
            f"Content-Type: {response.content_type}", f"Content-Length: {len(response.body)}",
            "X-Content-Type-Options: nosniff", "Cache-Control: no-store"]
    head += [f"{name}: {value}" for name, value in response.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body


def parse_error(exc):
    """(status, message, bare) for an exception of gunicorn's parser; bare: the
    request line was not understood far enough to know its HTTP version, so the
    answer is a bare body (as HTTP/0.9), like Python's http.server did."""
    if isinstance(exc, gerrors.LimitRequestLine):
        return 414, "Request-URI Too Long", False
    if isinstance(exc, gerrors.InvalidRequestLine):
        bits = str(exc.req).split()
        if len(bits) == 3 and bits[2] in ("HTTP/1.0", "HTTP/1.1"):
            return 400, "invalid request target", False
        return 400, f"Bad request syntax ({_short(str(exc.req))!r})", True
    if isinstance(exc, gerrors.InvalidHTTPVersion):
        return 400, f"Bad request version ({_short(str(exc.version))!r})", True
    if isinstance(exc, gerrors.InvalidRequestMethod):
        return 405, f"Unsupported method ({_short(str(exc.method))!r})", False
    if isinstance(exc, gerrors.LimitRequestHeaders):
        return 431, "Request Header Fields Too Large", False
    if isinstance(exc, gerrors.InvalidHeader) and "CONTENT-LENGTH" in str(exc):
        return 400, "invalid Content-Length", False
    if isinstance(exc, (gerrors.InvalidHeader, gerrors.InvalidHeaderName)):
        return 400, "invalid header", False
    if isinstance(exc, gerrors.ParseException):
        return 400, "Bad request", False
    if isinstance(exc, ssl.SSLError):
        return 400, "Bad request", True
    log.error("unexpected error while reading a request: %r", exc)
    return 500, "internal server error", False


def _linger(sock, timeout=1.0, limit=1024 * 1024):
    """After an error answer: end our side, then read (and drop) what the client still
    sends for a moment, so that closing with unread data does not reset the
    connection before the client has read the answer."""
    if isinstance(sock, ssl.SSLSocket):
        return
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(timeout)
    read = 0
    while read < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        read += len(chunk)


def _short(text, limit=100):
    return text[:limit]


def listen(host, port, backlog=128):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServer:
    """The listening socket and the embedded gthread worker, in a thread of its own."""

    def __init__(self, address, wsgi, cfg, app, tls=None, request_timeout=10.0, handshake_timeout=10.0):
        self.socket = listen(*address)
        self.server_address = self.socket.getsockname()
        self.worker = DaemonWorker(self.socket, wsgi, gunicorn_settings(cfg), app, tls=tls,
                                   request_timeout=request_timeout, handshake_timeout=handshake_timeout)
        self.worker.prepare()
        self._thread = None

    @property
    def tls_handshake_timeout(self):
        return self.worker.tls_handshake_timeout

    @tls_handshake_timeout.setter
    def tls_handshake_timeout(self, value):
        self.worker.tls_handshake_timeout = value

    def start(self):
        self._thread = threading.Thread(target=self.worker.run, name="http-accept", daemon=True)
        self._thread.start()

    def shutdown(self):
        """Stop accepting; requests in flight finish (at most DAEMON_GRACEFUL_TIMEOUT)."""
        self.worker.alive = False
        if self._thread is not None:
            self._thread.join()
        self.worker.close_idle()
