"""Configuration, read only from environment variables.

The guide's variables (DB_TYPE, DB_HOST, DB_PORT, DB_NAME, DB_USER,
DB_PASSWORD / DB_PASSWORD_FILE, DATABASE_PATH, REDIS_URL, NODE_ENV,
BMAD_EXECUTION_ENABLED, AUTO_PROJECT_GENERATION) plus the kit's optional
extras, among them REDIS_PASSWORD_FILE (Redis's password read from a file, so
that no secret need be in the container's environment), REDIS_CA_FILE (the CA
a rediss:// server's certificate is verified against), METRICS_ENABLED
(GET /metrics on or off), DAEMON_TLS_CERT / DAEMON_TLS_KEY (HTTPS) and the HTTP
server's DAEMON_WORKERS, DAEMON_THREADS, DAEMON_KEEPALIVE,
DAEMON_GRACEFUL_TIMEOUT and DAEMON_MAX_CONNECTIONS. Every value is checked once, at start; a bad one
raises ConfigError whose message starts with the variable's name, and the
daemon exits.
"""

from __future__ import annotations

import dataclasses
import ssl
import urllib.parse

from .tls import check_pair

# What the daemon may ask libpq for: it writes, so a standby is never what it wants.
TARGET_SESSION_ATTRS = ("any", "read-write", "primary")
SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


class ConfigError(ValueError):
    """A variable has a value the daemon cannot use; str() names the variable."""


@dataclasses.dataclass(frozen=True)
class Config:
    db_type: str = "postgresql"
    # DB_HOST may list several hosts (libpq's multi-host form, a,b,c): db_hosts
    # holds them, db_ports one port each; db_host and db_port are the text and
    # the first port, for messages.
    db_host: str = "localhost"
    db_port: int = 5432
    db_hosts: tuple = ("localhost",)
    db_ports: tuple = (5432,)
    # libpq's target_session_attrs: read-write by default when DB_HOST lists
    # several hosts, so that the daemon's connections find the primary.
    db_target_session_attrs: str | None = None
    db_name: str = "claude_daemon"
    db_user: str = "claude_app"
    db_password: str = dataclasses.field(default="", repr=False)
    database_path: str = "/data/claude-daemon.db"
    redis_url: str = dataclasses.field(default="", repr=False)
    # From REDIS_PASSWORD_FILE (REDIS_URL then carries none); None = as the URL says.
    redis_password: str | None = dataclasses.field(default=None, repr=False)
    # From REDIS_CA_FILE, rediss:// only; None = the system's trust store. A
    # rediss:// server's certificate is always verified, its name included.
    redis_ca_file: str | None = None
    node_env: str = "development"
    bmad_execution_enabled: bool = False
    auto_project_generation: bool = False
    port: int = 5000
    db_pool_max: int = 20
    db_idle_timeout: float = 30.0
    db_connect_timeout: int = 2
    db_sslmode: str | None = None
    db_sslrootcert: str | None = None
    cache_ttl: int = 30
    usage_interval: float = 60.0
    reconcile_interval: float = 10.0
    # GET /metrics (Prometheus); METRICS_ENABLED=0 answers it with 404.
    metrics_enabled: bool = True
    # DAEMON_TLS_CERT and DAEMON_TLS_KEY (both or neither): HTTPS only on PORT.
    # Neither: plain HTTP (development, tests).
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    # The HTTP server (server.py, gunicorn's gthread worker in this process).
    # DAEMON_WORKERS: processes; only 1 (see daemon/README.md, "Why one process").
    http_workers: int = 1
    # DAEMON_THREADS: requests answered at once.
    http_threads: int = 16
    # DAEMON_KEEPALIVE: seconds an idle HTTP/1.1 connection is kept open for its
    # next request (longer than Nginx's upstream keepalive_timeout, 60 s).
    http_keepalive: int = 75
    # DAEMON_GRACEFUL_TIMEOUT: seconds requests in flight get to finish on SIGTERM.
    http_graceful_timeout: int = 8
    # DAEMON_MAX_CONNECTIONS: open client connections (busy and idle keep-alive).
    http_max_connections: int = 1000

    @property
    def tls(self):
        """True when the API is served over HTTPS."""
        return self.tls_cert_file is not None

    @property
    def features(self):
        return {
            "bmad_execution": self.bmad_execution_enabled,
            "auto_project_generation": self.auto_project_generation,
        }

    @property
    def redis_tls(self):
        """True for a rediss:// URL: TLS, the server's certificate and name verified."""
        return is_tls_url(self.redis_url)

    @property
    def redis_url_redacted(self):
        return redact_url(self.redis_url)

    def summary(self):
        """One loggable line; never contains a password."""
        parts = [f"db_type={self.db_type}"]
        if self.db_type == "postgresql":
            where = ",".join(f"{h}:{p}" for h, p in zip(self.db_hosts, self.db_ports))
            parts.append(f"db={self.db_user}@{where}/{self.db_name}")
            if self.db_target_session_attrs:
                parts.append(f"target_session_attrs={self.db_target_session_attrs}")
            parts.append(f"sslmode={self.db_sslmode or 'libpq-default'}")
            parts.append(f"pool_max={self.db_pool_max}")
        parts.append(f"sqlite={self.database_path}")
        parts.append(f"redis={self.redis_url_redacted or 'disabled'}")
        if self.redis_url and self.redis_password is not None:
            parts.append("redis_password=REDIS_PASSWORD_FILE")
        if self.redis_tls:
            parts.append(f"redis_ca={self.redis_ca_file or 'system-trust-store'}")
        parts.append(f"port={self.port} node_env={self.node_env}")
        parts.append(f"metrics={'on' if self.metrics_enabled else 'off'}")
        parts.append(f"tls={self.tls_cert_file if self.tls else 'off'}")
        parts.append(f"workers={self.http_workers} threads={self.http_threads} keepalive={self.http_keepalive} "
                     f"graceful_timeout={self.http_graceful_timeout} max_connections={self.http_max_connections}")
        return " ".join(parts)


def is_tls_url(url):
    """True for a rediss:// URL (any case)."""
    return urllib.parse.urlsplit(url).scheme == "rediss" if url else False


def redact_url(url):
    """redis://user:secret@host:6379/0 -> redis://user:***@host:6379/0."""
    if not url:
        return ""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _text(env, name, default):
    value = env.get(name)
    if value is None or value == "":
        return default
    return value


def _int(env, name, default, minimum=None, maximum=None):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw.strip(), 10)
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name}: must be at most {maximum}, got {value}")
    return value


def _hosts_and_ports(env):
    """DB_HOST's hosts (one, or several as a,b,c) and one port per host from DB_PORT
    (one port for all, or one per host, as libpq takes them)."""
    raw = _text(env, "DB_HOST", "localhost")
    hosts = tuple(h.strip() for h in raw.split(","))
    for number, host in enumerate(hosts, 1):
        if not host or any(c.isspace() for c in host):
            raise ConfigError(f"DB_HOST: host {number} of {len(hosts)} is empty or contains a space, got {raw!r}")
    raw_ports = _text(env, "DB_PORT", "5432")
    ports = tuple(_int({"DB_PORT": p}, "DB_PORT", None, 1, 65535) for p in raw_ports.split(","))
    if None in ports:
        raise ConfigError(f"DB_PORT: an empty port in {raw_ports!r}")
    if len(ports) == 1:
        ports = ports * len(hosts)
    elif len(ports) != len(hosts):
        raise ConfigError(f"DB_PORT: {len(ports)} ports for {len(hosts)} hosts in DB_HOST "
                          "(give one port for all of them, or one per host)")
    return hosts, ports


def _seconds(env, name, default, minimum=0.01):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not value >= minimum or value == float("inf"):  # also rejects NaN
        raise ConfigError(f"{name}: must be a finite number of seconds >= {minimum}, got {raw!r}")
    return value


def _bool(env, name, default=False):
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    low = raw.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true/false (also 1/0, yes/no, on/off), got {raw!r}")


def _read_secret(name, path):
    """The content of the file named by variable `name`, less one trailing newline (LF or CRLF)."""
    try:
        with open(path, encoding="utf-8") as fh:
            value = fh.read()
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path}: {exc.strerror}") from None
    except ValueError:  # UnicodeDecodeError; its message would quote the file's bytes
        raise ConfigError(f"{name}: {path} is not UTF-8 text") from None
    if value.endswith("\r\n"):
        return value[:-2]
    return value[:-1] if value.endswith("\n") else value


def _password(env):
    path = env.get("DB_PASSWORD_FILE")
    if path:  # the file wins over DB_PASSWORD (Docker secrets)
        return _read_secret("DB_PASSWORD_FILE", path)
    return env.get("DB_PASSWORD", "")


def _redis_url(env):
    url = env.get("REDIS_URL", "").strip()
    if not url:
        return ""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # raises ValueError on a non-numeric port
    except ValueError:
        raise ConfigError(f"REDIS_URL: not a valid URL ({redact_url(url)})") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ConfigError(f"REDIS_URL: expected redis://[user:password@]host[:port][/db], got {redact_url(url)}")
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ConfigError(f"REDIS_URL: the database number must be an integer, got {path!r}")
    # redis-py lets the URL's query override the client's TLS options
    # (?ssl_cert_reqs=none would switch verification off): not accepted.
    tls_options = sorted({name for name in urllib.parse.parse_qs(parts.query) if name.startswith("ssl")})
    if tls_options:
        raise ConfigError(f"REDIS_URL: TLS options in the URL are not accepted ({', '.join(tls_options)}); "
                          "a rediss:// server is always verified, against REDIS_CA_FILE or the system's trust store")
    del port
    return url


def _redis_password(env, url):
    """REDIS_PASSWORD_FILE's content, or None when the variable is unset or empty.

    The password is for the user named in REDIS_URL (Redis's `default` user if
    it names none), so the URL must not carry a password of its own: two
    sources of one secret are refused rather than one silently preferred.
    """
    path = env.get("REDIS_PASSWORD_FILE")
    if not path:
        return None
    if not url:
        raise ConfigError("REDIS_PASSWORD_FILE: is set but REDIS_URL is empty; "
                          "set REDIS_URL (redis://user@host:6379/0) or unset REDIS_PASSWORD_FILE")
    if urllib.parse.urlsplit(url).password is not None:
        raise ConfigError(f"REDIS_PASSWORD_FILE: REDIS_URL must not also carry a password when "
                          f"REDIS_PASSWORD_FILE is set; use redis://user@host:port/db, got {redact_url(url)}")
    password = _read_secret("REDIS_PASSWORD_FILE", path)
    if password == "":
        raise ConfigError(f"REDIS_PASSWORD_FILE: {path} is empty")
    return password


def _redis_ca_file(env, url):
    """REDIS_CA_FILE, checked to hold at least one PEM certificate; None when unset or empty.

    Only for a rediss:// URL: with redis:// the file would be silently unused
    and the connection plain text, so that is refused. A rediss:// URL without
    it verifies the server against the system's trust store (a managed Redis
    with a publicly trusted certificate); verification is never off.
    """
    path = _text(env, "REDIS_CA_FILE", "").strip()
    if not path:
        return None
    if not url:
        raise ConfigError("REDIS_CA_FILE: is set but REDIS_URL is empty; "
                          "set REDIS_URL (rediss://user@host:6379/0) or unset REDIS_CA_FILE")
    if not is_tls_url(url):
        raise ConfigError(f"REDIS_CA_FILE: is set but REDIS_URL is not a TLS URL; use rediss://user@host:port/db "
                          f"(got {redact_url(url)}) or unset REDIS_CA_FILE")
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except ssl.SSLError:
        raise ConfigError(f"REDIS_CA_FILE: {path} holds no PEM certificate") from None
    except OSError as exc:
        raise ConfigError(f"REDIS_CA_FILE: cannot read {path}: {exc.strerror or exc}") from None
    return path


def _tls_files(env):
    """(DAEMON_TLS_CERT, DAEMON_TLS_KEY), checked to load together; (None, None) when both are unset."""
    cert = _text(env, "DAEMON_TLS_CERT", "").strip()
    key = _text(env, "DAEMON_TLS_KEY", "").strip()
    if not cert and not key:
        return None, None
    if not cert or not key:
        given, missing = ("DAEMON_TLS_CERT", "DAEMON_TLS_KEY") if cert else ("DAEMON_TLS_KEY", "DAEMON_TLS_CERT")
        raise ConfigError(f"{missing}: is empty while {given} is set; HTTPS needs both (or neither, for plain HTTP)")
    problem = check_pair(cert, key)
    if problem:
        raise ConfigError(f"DAEMON_TLS_CERT: {cert} with DAEMON_TLS_KEY {key}: {problem}")
    return cert, key


def _workers(env):
    """DAEMON_WORKERS: 1 (or unset). More processes would each run their own usage
    monitor and fallback copy-back: refused rather than silently double-counted."""
    workers = _int(env, "DAEMON_WORKERS", 1, 1)
    if workers != 1:
        raise ConfigError(f"DAEMON_WORKERS: must be 1, got {workers}; the daemon serves with one process and "
                          "DAEMON_THREADS threads (its usage monitor and fallback copy-back must run exactly once); "
                          "run more daemons behind Nginx to use more cores")
    return workers


def _http(env):
    threads = _int(env, "DAEMON_THREADS", 16, 1, 1000)
    max_connections = _int(env, "DAEMON_MAX_CONNECTIONS", 1000, 1, 100000)
    if max_connections <= threads:
        raise ConfigError(f"DAEMON_MAX_CONNECTIONS: must be more than DAEMON_THREADS ({threads}) so that idle "
                          f"keep-alive connections fit, got {max_connections}")
    return {
        "http_workers": _workers(env),
        "http_threads": threads,
        "http_keepalive": _int(env, "DAEMON_KEEPALIVE", 75, 0, 3600),
        "http_graceful_timeout": _int(env, "DAEMON_GRACEFUL_TIMEOUT", 8, 1, 3600),
        "http_max_connections": max_connections,
    }


def load(env):
    """Build a Config from a mapping such as os.environ; raise ConfigError on a bad value."""
    db_type = _text(env, "DB_TYPE", "postgresql").strip().lower()
    if db_type not in ("postgresql", "sqlite"):
        raise ConfigError(f"DB_TYPE: expected 'postgresql' or 'sqlite', got {env.get('DB_TYPE')!r}")
    node_env = _text(env, "NODE_ENV", "development").strip()

    sslmode = _text(env, "DB_SSLMODE", None)
    if sslmode is not None and sslmode not in SSLMODES:
        raise ConfigError(f"DB_SSLMODE: expected one of {', '.join(SSLMODES)}, got {sslmode!r}")
    sslrootcert = _text(env, "DB_SSLROOTCERT", None)
    if sslmode is None and sslrootcert and node_env == "production":
        # The guide's production TLS sets rejectUnauthorized: false, which
        # encrypts but accepts any certificate, so a man in the middle can
        # read the password. Given a CA, production verifies both the chain
        # and the host name unless DB_SSLMODE explicitly says otherwise.
        sslmode = "verify-full"

    hosts, ports = _hosts_and_ports(env)
    attrs = _text(env, "DB_TARGET_SESSION_ATTRS", None)
    if attrs is not None and attrs not in TARGET_SESSION_ATTRS:
        raise ConfigError(f"DB_TARGET_SESSION_ATTRS: expected one of {', '.join(TARGET_SESSION_ATTRS)} "
                          f"(the daemon writes: a standby cannot serve it), got {attrs!r}")
    if attrs is None and len(hosts) > 1:
        attrs = "read-write"
    database_path = _text(env, "DATABASE_PATH", "/data/claude-daemon.db")
    redis_url = _redis_url(env)
    tls_cert, tls_key = _tls_files(env)
    return Config(
        db_type=db_type,
        db_host=",".join(hosts),
        db_port=ports[0],
        db_hosts=hosts,
        db_ports=ports,
        db_target_session_attrs=attrs,
        db_name=_text(env, "DB_NAME", "claude_daemon"),
        db_user=_text(env, "DB_USER", "claude_app"),
        db_password=_password(env),
        database_path=database_path,
        redis_url=redis_url,
        redis_password=_redis_password(env, redis_url),
        redis_ca_file=_redis_ca_file(env, redis_url),
        node_env=node_env,
        bmad_execution_enabled=_bool(env, "BMAD_EXECUTION_ENABLED"),
        auto_project_generation=_bool(env, "AUTO_PROJECT_GENERATION"),
        port=_int(env, "PORT", 5000, 1, 65535),
        db_pool_max=_int(env, "DB_POOL_MAX", 20, 1, 1000),
        db_idle_timeout=_seconds(env, "DB_IDLE_TIMEOUT", 30.0),
        # libpq takes whole seconds (and treats 1 as 2).
        db_connect_timeout=_int(env, "DB_CONNECT_TIMEOUT", 2, 1, 600),
        db_sslmode=sslmode,
        db_sslrootcert=sslrootcert,
        cache_ttl=_int(env, "CACHE_TTL", 30, 1, 86400),
        usage_interval=_seconds(env, "USAGE_INTERVAL", 60.0),
        reconcile_interval=_seconds(env, "RECONCILE_INTERVAL", 10.0),
        metrics_enabled=_bool(env, "METRICS_ENABLED", True),
        tls_cert_file=tls_cert,
        tls_key_file=tls_key,
        **_http(env),
    )
