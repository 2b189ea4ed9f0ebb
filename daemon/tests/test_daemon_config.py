"""Configuration from the environment: defaults, parsing, errors naming the variable."""

import pytest

from claude_daemon import config
from claude_daemon.config import ConfigError
from claude_daemon.errors import StoreUnavailable
from claude_daemon.stores import PgStore


def test_defaults_are_the_guides():
    cfg = config.load({})
    assert (cfg.db_type, cfg.db_host, cfg.db_port, cfg.db_name, cfg.db_user) == (
        "postgresql", "localhost", 5432, "claude_daemon", "claude_app")
    assert cfg.database_path == "/data/claude-daemon.db"
    assert cfg.redis_url == ""
    assert (cfg.port, cfg.db_pool_max, cfg.db_idle_timeout, cfg.db_connect_timeout) == (5000, 20, 30.0, 2)
    assert (cfg.cache_ttl, cfg.usage_interval, cfg.reconcile_interval) == (30, 60.0, 10.0)
    assert cfg.db_sslmode is None and cfg.db_sslrootcert is None
    assert cfg.features == {"bmad_execution": False, "auto_project_generation": False}


def test_values_are_parsed():
    cfg = config.load({
        "DB_TYPE": "SQLite", "DB_PORT": "6543", "PORT": "5001", "DB_POOL_MAX": "7", "DB_IDLE_TIMEOUT": "1.5",
        "DB_CONNECT_TIMEOUT": "4", "CACHE_TTL": "12", "USAGE_INTERVAL": "0.5", "RECONCILE_INTERVAL": "3",
        "BMAD_EXECUTION_ENABLED": "true", "AUTO_PROJECT_GENERATION": "0", "DATABASE_PATH": "/tmp/x.db",
        "REDIS_URL": "redis://claude:pw@redis:6379/0",
    })
    assert cfg.db_type == "sqlite" and cfg.db_port == 6543 and cfg.port == 5001 and cfg.db_pool_max == 7
    assert cfg.db_idle_timeout == 1.5 and cfg.db_connect_timeout == 4 and cfg.cache_ttl == 12
    assert cfg.usage_interval == 0.5 and cfg.reconcile_interval == 3.0 and cfg.database_path == "/tmp/x.db"
    assert cfg.features == {"bmad_execution": True, "auto_project_generation": False}
    assert cfg.redis_url == "redis://claude:pw@redis:6379/0"


@pytest.mark.parametrize("raw,expected", [("yes", True), ("ON", True), ("1", True), ("False", False),
                                          ("off", False), ("no", False), ("", False)])
def test_booleans(raw, expected):
    assert config.load({"BMAD_EXECUTION_ENABLED": raw}).bmad_execution_enabled is expected


@pytest.mark.parametrize("name,value", [
    ("PORT", "abc"), ("PORT", "0"), ("PORT", "65536"), ("DB_PORT", "5432x"), ("DB_POOL_MAX", "0"),
    ("DB_IDLE_TIMEOUT", "-1"), ("DB_IDLE_TIMEOUT", "nan"), ("DB_CONNECT_TIMEOUT", "1.5"),
    ("CACHE_TTL", "0"), ("USAGE_INTERVAL", "inf"), ("RECONCILE_INTERVAL", "soon"), ("DB_TYPE", "mysql"),
    ("BMAD_EXECUTION_ENABLED", "maybe"), ("AUTO_PROJECT_GENERATION", "2"), ("DB_SSLMODE", "strict"),
    ("REDIS_URL", "http://redis:6379"), ("REDIS_URL", "redis://redis:port/0"), ("REDIS_URL", "redis://redis/x"),
    ("DB_HOST", "db1,,db3"), ("DB_HOST", "db1, db 2"), ("DB_PORT", "5432,"), ("DB_PORT", "5432,70000"),
    ("DB_TARGET_SESSION_ATTRS", "standby"), ("DB_TARGET_SESSION_ATTRS", "read-only"),
])
def test_bad_value_names_the_variable(name, value):
    with pytest.raises(ConfigError) as err:
        config.load({name: value})
    assert str(err.value).startswith(f"{name}:")


def test_password_file_wins_and_loses_only_its_trailing_newline(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("  s3cret with spaces \n")
    cfg = config.load({"DB_PASSWORD": "from-env", "DB_PASSWORD_FILE": str(secret)})
    assert cfg.db_password == "  s3cret with spaces "
    secret.write_text("crlf\r\n")
    assert config.load({"DB_PASSWORD_FILE": str(secret)}).db_password == "crlf"
    secret.write_text("no-newline")
    assert config.load({"DB_PASSWORD_FILE": str(secret)}).db_password == "no-newline"
    assert config.load({"DB_PASSWORD": "from-env"}).db_password == "from-env"


def test_unreadable_password_file_names_the_variable(tmp_path):
    with pytest.raises(ConfigError) as err:
        config.load({"DB_PASSWORD_FILE": str(tmp_path / "missing")})
    assert str(err.value).startswith("DB_PASSWORD_FILE:")


def test_redis_password_file_is_the_password_of_the_urls_user(tmp_path):
    secret = tmp_path / "redis_pw"
    secret.write_text("  r3dis with spaces \n")
    cfg = config.load({"REDIS_URL": "redis://claude_app@10.0.0.5:6379/0", "REDIS_PASSWORD_FILE": str(secret)})
    assert cfg.redis_password == "  r3dis with spaces "
    assert cfg.redis_url == "redis://claude_app@10.0.0.5:6379/0"  # as given; the password is not put in it
    secret.write_text("crlf\r\n")
    assert config.load({"REDIS_URL": "redis://u@r:6379/0", "REDIS_PASSWORD_FILE": str(secret)}).redis_password == "crlf"
    secret.write_text("no-newline")
    assert config.load({"REDIS_URL": "redis://r:6379", "REDIS_PASSWORD_FILE": str(secret)}).redis_password == (
        "no-newline")  # no user in the URL: Redis's default user
    # Unset or empty: the URL alone decides, as before.
    assert config.load({"REDIS_URL": "redis://u:pw@r:6379/0"}).redis_password is None
    assert config.load({"REDIS_URL": "redis://u:pw@r:6379/0", "REDIS_PASSWORD_FILE": ""}).redis_password is None
    assert config.load({}).redis_password is None


@pytest.mark.parametrize("url", ["redis://claude:url-secret-77@r:6379/0", "redis://:url-secret-77@r:6379/0",
                                 "redis://claude:@r:6379/0"])
def test_redis_password_file_with_a_password_in_the_url_is_refused(tmp_path, url):
    secret = tmp_path / "redis_pw"
    secret.write_text("file-secret-88\n")
    with pytest.raises(ConfigError) as err:
        config.load({"REDIS_URL": url, "REDIS_PASSWORD_FILE": str(secret)})
    message = str(err.value)
    assert message.startswith("REDIS_PASSWORD_FILE: REDIS_URL must not also carry a password")
    assert "redis://user@host:port/db" in message and "***@r:6379/0" in message  # the URL, redacted
    assert "url-secret-77" not in message and "file-secret-88" not in message


def test_redis_password_file_needs_a_redis_url(tmp_path):
    secret = tmp_path / "redis_pw"
    secret.write_text("file-secret-88\n")
    with pytest.raises(ConfigError) as err:
        config.load({"REDIS_PASSWORD_FILE": str(secret)})
    assert str(err.value).startswith("REDIS_PASSWORD_FILE: is set but REDIS_URL is empty")
    assert "file-secret-88" not in str(err.value)


@pytest.mark.parametrize("name", ["REDIS_PASSWORD_FILE", "DB_PASSWORD_FILE"])
def test_unreadable_secret_files_name_the_variable(tmp_path, name):
    env = {"REDIS_URL": "redis://claude@r:6379/0"}
    with pytest.raises(ConfigError) as err:
        config.load({**env, name: str(tmp_path / "missing")})
    assert str(err.value) == f"{name}: cannot read {tmp_path / 'missing'}: No such file or directory"
    with pytest.raises(ConfigError) as err:
        config.load({**env, name: str(tmp_path)})  # a directory
    assert str(err.value).startswith(f"{name}: cannot read {tmp_path}:")
    binary = tmp_path / "binary"
    binary.write_bytes(b"secret-\xff\xfe-bytes")
    with pytest.raises(ConfigError) as err:
        config.load({**env, name: str(binary)})
    assert str(err.value) == f"{name}: {binary} is not UTF-8 text"  # no byte of the content


def test_an_empty_redis_password_file_is_refused(tmp_path):
    for content in ("", "\n"):
        secret = tmp_path / "redis_pw"
        secret.write_text(content)
        with pytest.raises(ConfigError) as err:
            config.load({"REDIS_URL": "redis://claude@r:6379/0", "REDIS_PASSWORD_FILE": str(secret)})
        assert str(err.value) == f"REDIS_PASSWORD_FILE: {secret} is empty"


def test_production_with_a_ca_verifies_the_server():
    env = {"NODE_ENV": "production", "DB_SSLROOTCERT": "/etc/ssl/ca.pem"}
    assert config.load(env).db_sslmode == "verify-full"
    assert config.load({**env, "DB_SSLMODE": "require"}).db_sslmode == "require"  # explicit wins
    assert config.load({"NODE_ENV": "development", "DB_SSLROOTCERT": "/ca.pem"}).db_sslmode is None
    assert config.load({"NODE_ENV": "production"}).db_sslmode is None  # no CA: libpq's default


def test_ssl_settings_reach_libpq(pg_db):
    """sslmode=require against the test cluster (no TLS) must fail: the setting is really passed."""
    cfg = config.load(pg_db.env(DB_SSLMODE="require"))
    store = PgStore(cfg)
    try:
        with pytest.raises(StoreUnavailable) as err:
            store.ping()
        assert "SSL" in str(err.value)
    finally:
        store.close()
    store = PgStore(config.load(pg_db.env(DB_SSLMODE="disable")))
    try:
        store.ping()
    finally:
        store.close()


def test_secrets_never_appear_in_repr_or_summary(tmp_path):
    cfg = config.load({"DB_PASSWORD": "pg-pass-123", "REDIS_URL": "redis://claude:redis-pass-456@cache:6379/0"})
    for text in (repr(cfg), cfg.summary()):
        assert "pg-pass-123" not in text and "redis-pass-456" not in text
    assert "redis://claude:***@cache:6379/0" in cfg.summary()
    assert config.redact_url("redis://cache:6379") == "redis://cache:6379"
    secret = tmp_path / "redis_pw"
    secret.write_text("redis-file-789\n")
    cfg = config.load({"REDIS_URL": "redis://claude@cache:6379/0", "REDIS_PASSWORD_FILE": str(secret)})
    for text in (repr(cfg), cfg.summary(), str(cfg)):
        assert "redis-file-789" not in text
    assert "redis=redis://claude@cache:6379/0 redis_password=REDIS_PASSWORD_FILE" in cfg.summary()


# --- the HTTP server (DAEMON_*) -----------------------------------------------------------------


def test_http_server_defaults_and_values():
    cfg = config.load({})
    assert (cfg.http_workers, cfg.http_threads, cfg.http_keepalive, cfg.http_graceful_timeout,
            cfg.http_max_connections) == (1, 16, 75, 8, 1000)
    assert "workers=1 threads=16 keepalive=75 graceful_timeout=8 max_connections=1000" in cfg.summary()
    cfg = config.load({"DAEMON_WORKERS": "1", "DAEMON_THREADS": "32", "DAEMON_KEEPALIVE": "0",
                       "DAEMON_GRACEFUL_TIMEOUT": "20", "DAEMON_MAX_CONNECTIONS": "200"})
    assert (cfg.http_workers, cfg.http_threads, cfg.http_keepalive, cfg.http_graceful_timeout,
            cfg.http_max_connections) == (1, 32, 0, 20, 200)


@pytest.mark.parametrize("name,raw,message", [
    ("DAEMON_THREADS", "many", "DAEMON_THREADS: expected an integer, got 'many'"),
    ("DAEMON_THREADS", "0", "DAEMON_THREADS: must be at least 1, got 0"),
    ("DAEMON_THREADS", "1001", "DAEMON_THREADS: must be at most 1000, got 1001"),
    ("DAEMON_KEEPALIVE", "-1", "DAEMON_KEEPALIVE: must be at least 0, got -1"),
    ("DAEMON_KEEPALIVE", "1.5", "DAEMON_KEEPALIVE: expected an integer, got '1.5'"),
    ("DAEMON_GRACEFUL_TIMEOUT", "0", "DAEMON_GRACEFUL_TIMEOUT: must be at least 1, got 0"),
    ("DAEMON_GRACEFUL_TIMEOUT", "soon", "DAEMON_GRACEFUL_TIMEOUT: expected an integer, got 'soon'"),
    ("DAEMON_MAX_CONNECTIONS", "16", "DAEMON_MAX_CONNECTIONS: must be more than DAEMON_THREADS (16)"),
    ("DAEMON_WORKERS", "0", "DAEMON_WORKERS: must be at least 1, got 0"),
    ("DAEMON_WORKERS", "x", "DAEMON_WORKERS: expected an integer, got 'x'"),
])
def test_bad_http_server_values_name_their_variable(name, raw, message):
    with pytest.raises(ConfigError) as err:
        config.load({name: raw})
    assert str(err.value).startswith(message)


def test_more_than_one_worker_process_is_refused_not_double_counted():
    with pytest.raises(ConfigError) as err:
        config.load({"DAEMON_WORKERS": "2"})
    text = str(err.value)
    assert text.startswith("DAEMON_WORKERS: must be 1, got 2") and "DAEMON_THREADS" in text


def test_several_hosts_ask_for_the_read_write_one_by_default():
    cfg = config.load({"DB_HOST": "10.0.0.11,10.0.0.12, 10.0.0.13", "DB_PORT": "6432"})
    assert cfg.db_hosts == ("10.0.0.11", "10.0.0.12", "10.0.0.13") and cfg.db_ports == (6432, 6432, 6432)
    assert cfg.db_host == "10.0.0.11,10.0.0.12,10.0.0.13" and cfg.db_port == 6432
    assert cfg.db_target_session_attrs == "read-write"
    assert "db=claude_app@10.0.0.11:6432,10.0.0.12:6432,10.0.0.13:6432/claude_daemon" in cfg.summary()
    assert "target_session_attrs=read-write" in cfg.summary()
    # One host: libpq's own default (any), unless asked.
    assert config.load({}).db_target_session_attrs is None
    assert config.load({"DB_TARGET_SESSION_ATTRS": "primary"}).db_target_session_attrs == "primary"


def test_one_port_per_host_or_one_for_all():
    cfg = config.load({"DB_HOST": "a,b", "DB_PORT": "5432,5433"})
    assert cfg.db_ports == (5432, 5433)
    with pytest.raises(ConfigError) as err:
        config.load({"DB_HOST": "a,b,c", "DB_PORT": "5432,5433"})
    assert str(err.value).startswith("DB_PORT: 2 ports for 3 hosts")
