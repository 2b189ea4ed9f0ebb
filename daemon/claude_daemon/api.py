"""The HTTP API and dashboard, a WSGI application served by gunicorn's gthread worker (server.py).

    GET  /                              the dashboard (static/index.html)
    GET  /health                        200 / 503, JSON state of database, Redis, features
    GET  /api/usage?from=&to=&limit=    usage_data rows in [from, to], by timestamp
    GET  /api/alerts?level=&acknowledged=&limit=
    POST /api/alerts                    {id?, level, title, message?, metadata?} -> 201
    POST /api/alerts/{id}/acknowledge   -> 200, or 404 for an unknown id
    GET  /api/predictions?from=&to=&limit=
    GET  /metrics                       Prometheus text format (metrics.py); 404 with METRICS_ENABLED=0

HTTP/1.1 with keep-alive. HTTPS only when DAEMON_TLS_CERT and DAEMON_TLS_KEY
are set (tls.py): the handshake runs in a request thread, with a timeout, so a
client that never completes it holds no one else up. JSON in and out. Bad input gets a 4xx with {"error": "..."}; an unexpected
exception is logged (one line) and answered with a generic 500, never a trace.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import hashlib
import http
import http.cookies
import json
import logging
import pathlib
import re
import socket
import time
import urllib.parse
import uuid

from . import __version__, schema
from .cache import BYPASS, Cache
from .db import Database, utcnow
from .errors import CommitInDoubt, Conflict, Rejected, StoreUnavailable
from .metrics import Metrics
from .monitor import UsageMonitor
from .pool import PoolTimeout
from .server import KNOWN_METHODS, SERVER_NAME, HttpServer
from .tls import ReloadingContext

log = logging.getLogger("claude_daemon.api")

MAX_BODY = 64 * 1024
MAX_DRAIN = 1024 * 1024  # read (and drop) at most this much of a refused body
REQUEST_TIMEOUT = 10  # seconds a client may take to send its request
TLS_HANDSHAKE_TIMEOUT = 10  # seconds a client may take to complete the TLS handshake
MAX_SESSIONS_HEADER = 255
ALERT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,254}$")
ALERT_FIELDS = {"id", "level", "title", "message", "metadata"}
CACHED_TABLES = ("usage_data", "alerts", "predictions")
STATIC = pathlib.Path(__file__).resolve().parent / "static"
METRICS_ROUTE = "/metrics"


class ApiError(Exception):
    def __init__(self, status, message, headers=None, route=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.route = route  # the template the path matched, when the method did not (405)


class Response:
    def __init__(self, status, body, content_type="application/json; charset=utf-8", headers=None):
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = headers or {}


def json_response(status, obj, headers=None):
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return Response(status, body, headers=headers)


def error_response(status, message, headers=None):
    return json_response(status, {"error": message}, headers)


# -- input parsing -----------------------------------------------------------------------
def parse_query(query, allowed):
    try:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, strict_parsing=False,
                                       max_num_fields=20)
    except ValueError:
        raise ApiError(400, "too many query parameters") from None
    out = {}
    for key, value in pairs:
        if key not in allowed:
            raise ApiError(400, f"unknown query parameter {key!r}; allowed: {', '.join(sorted(allowed))}")
        if key in out:
            raise ApiError(400, f"query parameter {key!r} given more than once")
        out[key] = value
    return out


def parse_limit(raw, default, maximum):
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= maximum:
        raise ApiError(400, f"limit must be an integer from 1 to {maximum}")
    return int(raw)


def parse_timestamp_param(name, raw):
    try:
        return schema.parse_timestamp(raw)
    except schema.InvalidValue:
        raise ApiError(400, f"{name} must be an ISO 8601 date-time, e.g. 2024-05-01T12:00:00Z") from None


def parse_date_param(name, raw):
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a date YYYY-MM-DD") from None


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _csp_hash(html, tag):
    match = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    if not match:
        return None
    digest = hashlib.sha256(match.group(1).encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


def load_dashboard():
    html = (STATIC / "index.html").read_text(encoding="utf-8")
    # Only the page's own inline script and style may run, and it may only
    # talk to this server: no CDN, no external fetch, enforced by the browser.
    csp = (f"default-src 'none'; script-src {_csp_hash(html, 'script')}; style-src {_csp_hash(html, 'style')}; "
           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return Response(200, html.encode("utf-8"), "text/html; charset=utf-8",
                    {"Content-Security-Policy": csp, "Cache-Control": "no-cache"})


# -- the application ---------------------------------------------------------------------
class App:
    def __init__(self, cfg, db=None, cache=None):
        self.cfg = cfg
        self.db = db or Database(cfg)
        self.cache = cache or Cache(cfg.redis_url, cfg.cache_ttl, password=cfg.redis_password,
                                    ca_file=cfg.redis_ca_file)
        self.monitor = UsageMonitor(self.db, cfg.usage_interval)
        self.db.add_listener(self._invalidate)
        self.dashboard = load_dashboard()
        self.metrics = Metrics(self.db, self.cache)
        self.server = None
        self._server_thread = None
        self.routes = [
            ("GET", re.compile(r"^/$"), "/", self.get_dashboard),
            ("GET", re.compile(r"^/health$"), "/health", self.get_health),
            ("GET", re.compile(r"^/api/usage$"), "/api/usage", self.get_usage),
            ("GET", re.compile(r"^/api/alerts$"), "/api/alerts", self.get_alerts),
            ("POST", re.compile(r"^/api/alerts$"), "/api/alerts", self.post_alert),
            ("POST", re.compile(r"^/api/alerts/([^/]+)/acknowledge$"), "/api/alerts/{id}/acknowledge",
             self.post_acknowledge),
            ("GET", re.compile(r"^/api/predictions$"), "/api/predictions", self.get_predictions),
        ]
        if cfg.metrics_enabled:
            self.routes.append(("GET", re.compile(r"^/metrics$"), METRICS_ROUTE, self.get_metrics))
        self.metrics.declare_routes((m, t) for m, _, t, _ in self.routes if t != METRICS_ROUTE)

    def _invalidate(self, table):
        for name in CACHED_TABLES if table is None else (table,):
            if name in CACHED_TABLES:
                self.cache.invalidate(name)

    # -- life cycle ----------------------------------------------------------------------
    def start(self, host="0.0.0.0", port=None, background=True):
        self.db.start(background=background)
        tls = ReloadingContext(self.cfg.tls_cert_file, self.cfg.tls_key_file) if self.cfg.tls else None
        self.server = HttpServer((host, self.cfg.port if port is None else port), self, self.cfg, self, tls=tls,
                                 request_timeout=REQUEST_TIMEOUT, handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
        self.server.start()
        if background:
            self.monitor.start()
        log.info("listening on %s:%d (%s) version=%s threads=%d keepalive=%gs", host, self.port,
                 "https" if tls else "http", __version__, self.cfg.http_threads, self.cfg.http_keepalive)
        return self

    @property
    def port(self):
        return self.server.server_address[1]

    def stop(self):
        """Stop accepting, finish requests in flight, store the last usage row, close the stores."""
        if self.server is not None:
            self.server.shutdown()  # waits for the requests in flight (DAEMON_GRACEFUL_TIMEOUT at most)
        self.monitor.stop(flush=True)
        self.db.close()
        self.cache.close()
        log.info("stopped")

    # -- WSGI ----------------------------------------------------------------------------
    def __call__(self, environ, start_response):
        """The WSGI application: one request, answered with the API's own Response."""
        worker_conn = self.server.worker.current_connection() if self.server is not None else None
        tls_version = "-"
        if worker_conn is not None:
            version = getattr(worker_conn.sock, "version", None)
            tls_version = (version() if callable(version) else None) or "-"
        request = Request(self, environ, tls_version)
        method = request.command
        if method not in KNOWN_METHODS:
            response = self.refused(method, 405, f"Unsupported method ({method!r})", request.client_address[0])
            started = template = usage = None
        else:
            response, started, template, usage = request.handle(method)
        gunicorn_response = getattr(start_response, "__self__", None)
        if gunicorn_response is not None:
            gunicorn_response.version = SERVER_NAME
            if request.close_connection or method not in KNOWN_METHODS:
                gunicorn_response.force_close()
        status = f"{response.status} {http.HTTPStatus(response.status).phrase}"
        start_response(status, response_headers(response))
        body = [] if method == "HEAD" else [response.body]
        if started is not None:
            return _After(body, lambda: request.finished(response, started, template, usage))
        return body

    def refused(self, method, status, message, client="-"):
        """A request refused before routing (bad request line, unknown method ...): counted as
        unmatched with no duration (as in the usage monitor), logged, answered in JSON."""
        self.metrics.observe_request(method, None, status, 0.0)
        self.monitor.record(None, status, 0.0)
        log.info("request method=%s path=%s status=%d reason=%s client=%s", _clean(method or "-"), "-", status,
                 _clean(message), client)
        return error_response(status, message)

    def route(self, method, path):
        lookup = "GET" if method == "HEAD" else method
        allowed, matched = [], None
        for route_method, pattern, template, handler in self.routes:
            match = pattern.match(path)
            if match:
                if route_method == lookup:
                    return template, handler, match.groups()
                allowed.append(route_method)
                matched = matched or template
        if allowed:
            raise ApiError(405, f"method {method} not allowed here", {"Allow": ", ".join(sorted(set(allowed)))},
                           route=matched)
        raise ApiError(404, "not found")

    def cached(self, table, key, loader, request):
        value, state = self.cache.get_or_load(table, [self.db.current(), key], loader)
        request.cache_state = state
        return value

    # -- handlers ------------------------------------------------------------------------
    def get_dashboard(self, request, args, query):
        return self.dashboard

    def get_health(self, request, args, query):
        database = self.db.health()
        body = {
            "status": "ok" if database else "error",
            "database": database or "unavailable",
            "redis": self.cache.status(),
            "features": self.cfg.features,
            "version": __version__,
            "pending_sync": self.db.pending_sync(),
        }
        return json_response(200 if database else 503, body)

    def get_metrics(self, request, args, query):
        # Query parameters (a scrape config's `params`) are ignored.
        body, content_type = self.metrics.render()
        return Response(200, body, content_type)

    def get_usage(self, request, args, query):
        q = parse_query(query, {"from", "to", "limit"})
        start = parse_timestamp_param("from", q["from"]) if "from" in q else None
        end = parse_timestamp_param("to", q["to"]) if "to" in q else None
        if start is not None and end is not None and start > end:
            raise ApiError(400, "from must not be after to")
        limit = parse_limit(q.get("limit"), 10000, 50000)

        def load():
            # Defaults resolved at load time; a cached default answer is at most CACHE_TTL old.
            to = end or utcnow()
            frm = start or (to - dt.timedelta(hours=24) if to > dt.datetime.min + dt.timedelta(hours=24)
                            else dt.datetime.min)
            rows = self.db.select("usage_data", {"timestamp": [(">=", frm), ("<=", to)]},
                                  order_by="timestamp ASC, id ASC", limit=limit)
            return {"from": schema.jsonable(frm), "to": schema.jsonable(to),
                    "rows": [schema.jsonable_row(r) for r in rows]}

        key = ["usage", start and start.isoformat(), end and end.isoformat(), limit]
        return json_response(200, self.cached("usage_data", key, load, request))

    def get_alerts(self, request, args, query):
        q = parse_query(query, {"level", "acknowledged", "limit"})
        where = {}
        if "level" in q:
            if q["level"] not in schema.LEVELS:
                raise ApiError(400, f"level must be one of {', '.join(schema.LEVELS)}")
            where["level"] = q["level"]
        if "acknowledged" in q:
            if q["acknowledged"] not in ("true", "false"):
                raise ApiError(400, "acknowledged must be true or false")
            where["acknowledged"] = q["acknowledged"] == "true"
        limit = parse_limit(q.get("limit"), 100, 1000)

        def load():
            rows = self.db.select("alerts", where, order_by="timestamp DESC, id ASC", limit=limit)
            return {"rows": [schema.jsonable_row(r) for r in rows]}

        key = ["alerts", sorted((k, str(v)) for k, v in where.items()), limit]
        return json_response(200, self.cached("alerts", key, load, request))

    def post_alert(self, request, args, query):
        parse_query(query, set())
        body = request.json_body()
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        unknown = sorted(set(body) - ALERT_FIELDS)
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")
        alert_id = body.get("id")
        if alert_id is None:
            alert_id = str(uuid.uuid4())
        elif not isinstance(alert_id, str) or not ALERT_ID.match(alert_id):
            raise ApiError(400, "id must be 1-255 characters: letters, digits and . _ : - (not first)")
        level = body.get("level")
        if level not in schema.LEVELS:
            raise ApiError(400, f"level must be one of {', '.join(schema.LEVELS)}")
        title = body.get("title")
        if not isinstance(title, str) or not title.strip():
            raise ApiError(400, "title is required: a non-empty string")
        message = body.get("message")
        if message is not None and not isinstance(message, str):
            raise ApiError(400, "message must be a string")
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise ApiError(400, "metadata must be a JSON object")
        row = {"id": alert_id, "level": level, "title": title, "message": message, "metadata": metadata,
               "timestamp": utcnow(), "acknowledged": False}
        try:
            stored = self.db.insert("alerts", row)
        except Conflict:
            raise ApiError(409, f"an alert with id {alert_id!r} already exists") from None
        return json_response(201, schema.jsonable_row(stored))

    def post_acknowledge(self, request, args, query):
        parse_query(query, set())
        alert_id = urllib.parse.unquote(args[0], errors="strict")
        if not ALERT_ID.match(alert_id):
            raise ApiError(404, "no such alert")
        rows = self.db.update("alerts", {"acknowledged": True}, {"id": alert_id})
        if not rows:
            raise ApiError(404, "no such alert")
        return json_response(200, schema.jsonable_row(rows[0]))

    def get_predictions(self, request, args, query):
        q = parse_query(query, {"from", "to", "limit"})
        start = parse_date_param("from", q["from"]) if "from" in q else None
        end = parse_date_param("to", q["to"]) if "to" in q else None
        if start is not None and end is not None and start > end:
            raise ApiError(400, "from must not be after to")
        limit = parse_limit(q.get("limit"), 1000, 10000)
        conditions = [(op, value) for op, value in ((">=", start), ("<=", end)) if value is not None]

        def load():
            rows = self.db.select("predictions", {"date": conditions} if conditions else None,
                                  order_by="date ASC, id ASC", limit=limit)
            return {"rows": [schema.jsonable_row(r) for r in rows]}

        key = ["predictions", start and start.isoformat(), end and end.isoformat(), limit]
        return json_response(200, self.cached("predictions", key, load, request))


class _After:
    """A WSGI body whose close() (called once the response is written) runs `then`."""

    def __init__(self, chunks, then):
        self._chunks = chunks
        self._then = then

    def __iter__(self):
        return iter(self._chunks)

    def close(self):
        self._then()


def _clean(text, limit=200):
    text = text[:limit]
    return text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text


class Headers:
    """A request's headers from its WSGI environ, looked up by name in any case."""

    def __init__(self, environ):
        self._environ = environ

    def get(self, name, default=None):
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = self._environ.get(key)
        return default if value is None else value


class Request:
    """One request, from gunicorn's WSGI environ: what the handlers read."""

    def __init__(self, app, environ, tls_version="-"):
        self.app = app
        self.environ = environ
        self.command = environ["REQUEST_METHOD"]
        self.path = environ.get("RAW_URI") or environ.get("PATH_INFO", "/")
        self.headers = Headers(environ)
        self.rfile = environ["wsgi.input"]
        self.client_address = (environ.get("REMOTE_ADDR") or "-",)
        self.tls_version = tls_version
        self.close_connection = False
        self.cache_state = None
        self.body = b""

    # -- request body --------------------------------------------------------------------
    def _read_body(self):
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "chunked bodies are not supported; send Content-Length")
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            return b""
        raw_length = raw_length.strip()
        if not (raw_length.isascii() and raw_length.isdigit()):
            raise ApiError(400, "invalid Content-Length")
        length = int(raw_length)
        if length > MAX_BODY:
            self._drain(length)
            raise ApiError(413, f"request body larger than {MAX_BODY} bytes")
        body = self.rfile.read(length)
        if len(body) < length:
            raise ApiError(400, "request body shorter than Content-Length")
        return body

    def _drain(self, length):
        # Reading the refused body lets the client see the 413 instead of a reset.
        if length > MAX_DRAIN:
            self.close_connection = True
            return
        remaining = length
        while remaining > 0:
            chunk = self.rfile.read(min(65536, remaining))
            if not chunk:
                break
            remaining -= len(chunk)

    def json_body(self):
        content_type = self.headers.get("Content-Type")
        if content_type is not None:
            media = content_type.split(";", 1)[0].strip().lower()
            if media != "application/json" and not media.endswith("+json"):
                raise ApiError(415, "Content-Type must be application/json")
        if not self.body:
            raise ApiError(400, "a JSON body is required")
        try:
            return json.loads(self.body.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise ApiError(400, "the body is not valid JSON") from None

    # -- usage headers -------------------------------------------------------------------
    def _usage_headers(self):
        session = self.headers.get("X-Session-Id")
        if not session:
            cookie_header = self.headers.get("Cookie")
            if cookie_header:
                try:
                    cookie = http.cookies.SimpleCookie(cookie_header)
                    if "claude_session" in cookie:
                        session = cookie["claude_session"].value
                except http.cookies.CookieError:
                    session = None
        if session and len(session) > MAX_SESSIONS_HEADER:
            raise ApiError(400, f"X-Session-Id longer than {MAX_SESSIONS_HEADER} characters")
        tokens = 0
        raw = self.headers.get("X-Tokens-Used")
        if raw is not None:
            raw = raw.strip()
            if not (raw.isascii() and raw.isdigit()) or int(raw) > schema.INT4_MAX:
                raise ApiError(400, "X-Tokens-Used must be a non-negative integer")
            tokens = int(raw)
        cost = None
        raw = self.headers.get("X-Cost-Usd")
        if raw is not None:
            if not re.fullmatch(r"[0-9]{1,6}(\.[0-9]{1,4})?", raw.strip()):
                raise ApiError(400, "X-Cost-Usd must be a non-negative number with at most 4 decimals")
            cost = decimal.Decimal(raw.strip())
        return session or None, tokens, cost

    # -- dispatch ------------------------------------------------------------------------
    def handle(self, method):
        """Route and answer; returns the Response (head: no body is sent)."""
        started = time.monotonic()
        self.cache_state = None
        self.body = b""
        template = route = None  # route: the template for the metrics, also for a 405
        session, tokens, cost = None, 0, None
        path = "-"
        try:
            try:
                parts = urllib.parse.urlsplit(self.path)
            except ValueError:
                raise ApiError(400, "invalid request target") from None
            path = parts.path
            template, handler, args = self.app.route(method, path)
            route = template
            session, tokens, cost = self._usage_headers()
            if method == "POST":
                self.body = self._read_body()
            response = handler(self, args, parts.query)
        except ApiError as exc:
            route = route or exc.route
            response = error_response(exc.status, exc.message, exc.headers)
        except (schema.InvalidValue, schema.InvalidIdentifier) as exc:
            response = error_response(400, str(exc))
        except Rejected as exc:
            log.warning("database refused a write path=%s: %s", _clean(path), exc)
            response = error_response(400, "the database refused the values")
        except CommitInDoubt:
            response = error_response(503, "the database connection was lost while committing; the write will be "
                                           "applied when PostgreSQL is back")
        except StoreUnavailable as exc:
            log.error("no database available path=%s: %s", _clean(path), exc)
            response = error_response(503, "no database available")
        except PoolTimeout:
            response = error_response(503, "database busy, try again", {"Retry-After": "1"})
        except (TimeoutError, socket.timeout):
            self.close_connection = True
            response = error_response(408, "request timed out")
        except UnicodeDecodeError:
            response = error_response(400, "invalid percent-encoding")
        except Exception:  # logged here, generic to the client
            log.exception("unhandled error method=%s path=%s", method, _clean(path))
            response = error_response(500, "internal server error")
        if self.cache_state is not None:
            response.headers.setdefault("X-Cache", self.cache_state)
        elif template in ("/api/usage", "/api/alerts", "/api/predictions") and method in ("GET", "HEAD"):
            response.headers.setdefault("X-Cache", BYPASS)
        # Counted before the response is sent, so that a client that has its
        # answer finds it counted in its next scrape. Scrapes of /metrics are
        # not counted: the request metrics describe the API's traffic, and a
        # scrape must not change what the next one reads.
        if route != METRICS_ROUTE:
            self.app.metrics.observe_request(method, route, response.status, time.monotonic() - started)
        self._logged_path = path
        return response, started, template, (session, tokens, cost)

    def finished(self, response, started, template, usage):
        """After the response was written: the usage monitor and the request's log line."""
        elapsed_ms = (time.monotonic() - started) * 1000.0
        if template not in ("/health", METRICS_ROUTE):  # probes, not usage
            self.app.monitor.record(template, response.status, elapsed_ms, *usage)
        log.info("request method=%s path=%s status=%d ms=%.1f cache=%s client=%s tls=%s", self.command,
                 _clean(self._logged_path), response.status, elapsed_ms, self.cache_state or "-",
                 self.client_address[0], self.tls_version)


def response_headers(response):
    headers = [("Content-Type", response.content_type), ("Content-Length", str(len(response.body))),
               ("X-Content-Type-Options", "nosniff")]
    if "Cache-Control" not in response.headers:
        headers.append(("Cache-Control", "no-store"))
    headers.extend(response.headers.items())
    return headers
