"""Redis over TLS (rediss://): REDIS_CA_FILE's checks, the client's TLS options, and a
real Redis that listens only with TLS, as the kit's redis role runs it (`port 0`,
`tls-port`, `tls-auth-clients no`)."""

import shutil
import subprocess
import time

import pytest
import redis

from claude_daemon.cache import Cache, tls_options
from claude_daemon.config import ConfigError

from .daemon_helpers import REDIS_PASSWORD, REDIS_USER, config, free_port, start_redis

# --- REDIS_CA_FILE --------------------------------------------------------------------


def make_ca(directory, names="IP:127.0.0.1"):
    """A CA and a server certificate for `names` (subjectAltName), made with openssl:
    {'ca': path, 'cert': path, 'key': path}."""
    assert shutil.which("openssl"), "openssl missing: apt-get install -y openssl"
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.pem" for name in ("ca", "ca_key", "cert", "key", "csr")}
    ext = directory / "ext.cnf"
    ext.write_text(f"subjectAltName={names}\nextendedKeyUsage=serverAuth\n")

    def openssl(*args):
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=daemon test CA", "-keyout", paths["ca_key"], "-out", paths["ca"])
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=redis",
            "-keyout", paths["key"], "-out", paths["csr"])
    openssl("x509", "-req", "-in", paths["csr"], "-CA", paths["ca"], "-CAkey", paths["ca_key"], "-CAcreateserial",
            "-CAserial", directory / "ca.srl", "-days", "2", "-extfile", ext, "-out", paths["cert"])
    return {name: str(paths[name]) for name in ("ca", "cert", "key")}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("pki"))


def test_redis_ca_file_is_kept_for_a_rediss_url(pki):
    cfg = config.load({"REDIS_URL": "rediss://claude_app@10.0.0.5:6379/0", "REDIS_CA_FILE": pki["ca"]})
    assert cfg.redis_ca_file == pki["ca"] and cfg.redis_tls
    assert f"redis_ca={pki['ca']}" in cfg.summary()
    # Upper-case schemes are schemes too.
    assert config.load({"REDIS_URL": "REDISS://r:6379/0", "REDIS_CA_FILE": pki["ca"]}).redis_tls


def test_a_rediss_url_without_a_ca_file_verifies_against_the_system_store():
    for env in ({"REDIS_URL": "rediss://u@r:6379/0"}, {"REDIS_URL": "rediss://u@r:6379/0", "REDIS_CA_FILE": " "},
                {"REDIS_URL": "rediss://u@r:6379/0", "NODE_ENV": "production"}):
        cfg = config.load(env)
        assert cfg.redis_ca_file is None and cfg.redis_tls
        assert "redis_ca=system-trust-store" in cfg.summary()
    plain = config.load({"REDIS_URL": "redis://u@r:6379/0"})
    assert not plain.redis_tls and "redis_ca=" not in plain.summary()


def test_redis_ca_file_needs_a_rediss_url(pki):
    """With redis:// the CA would be unused and the connection plain text: refused."""
    with pytest.raises(ConfigError) as err:
        config.load({"REDIS_URL": "redis://claude:pw-123@r:6379/0", "REDIS_CA_FILE": pki["ca"]})
    assert str(err.value).startswith("REDIS_CA_FILE: is set but REDIS_URL is not a TLS URL; use rediss://")
    assert "pw-123" not in str(err.value)
    with pytest.raises(ConfigError) as err:
        config.load({"REDIS_CA_FILE": pki["ca"]})
    assert str(err.value).startswith("REDIS_CA_FILE: is set but REDIS_URL is empty")


def test_a_bad_redis_ca_file_names_the_variable(tmp_path):
    url = {"REDIS_URL": "rediss://u@r:6379/0"}
    missing = tmp_path / "missing.crt"
    with pytest.raises(ConfigError) as err:
        config.load({**url, "REDIS_CA_FILE": str(missing)})
    assert str(err.value) == f"REDIS_CA_FILE: cannot read {missing}: No such file or directory"
    not_pem = tmp_path / "not-a-cert.crt"
    not_pem.write_text("hello\n")
    with pytest.raises(ConfigError) as err:
        config.load({**url, "REDIS_CA_FILE": str(not_pem)})
    assert str(err.value) == f"REDIS_CA_FILE: {not_pem} holds no PEM certificate"


@pytest.mark.parametrize("query", ["ssl_cert_reqs=none", "ssl_check_hostname=false", "ssl_ca_certs=/tmp/x&db=0"])
def test_tls_options_in_the_url_are_refused(query):
    """redis-py would let them override verification."""
    with pytest.raises(ConfigError) as err:
        config.load({"REDIS_URL": f"rediss://u:secret-9@r:6379/0?{query}"})
    assert str(err.value).startswith("REDIS_URL: TLS options in the URL are not accepted (ssl_")
    assert "secret-9" not in str(err.value)


# --- the client's options ---------------------------------------------------------------


def pool_kwargs(cache):
    return cache.client.connection_pool.connection_kwargs


def test_a_rediss_client_requires_a_verified_certificate_and_host_name(pki):
    cache = Cache("rediss://claude_app@10.0.0.5:6379/0", ttl=30, password="pw", ca_file=pki["ca"])
    assert cache.client.connection_pool.connection_class is redis.connection.SSLConnection
    kwargs = pool_kwargs(cache)
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_check_hostname"], kwargs["ssl_ca_certs"]) == ("required", True, pki["ca"])
    assert kwargs["host"] == "10.0.0.5" and kwargs["username"] == "claude_app"
    # Without a CA file: still verified, against the system's trust store.
    kwargs = pool_kwargs(Cache("rediss://u@r:6379/0", ttl=30))
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_check_hostname"], kwargs["ssl_ca_certs"]) == ("required", True, None)


def test_a_plain_client_gets_no_tls_options(pki):
    cache = Cache("redis://u@r:6379/0", ttl=30)
    assert cache.client.connection_pool.connection_class is redis.connection.Connection
    assert not any(name.startswith("ssl_") for name in pool_kwargs(cache))
    assert tls_options("redis://r:6379/0") == {}
    with pytest.raises(ValueError):
        tls_options("redis://r:6379/0", pki["ca"])


# --- a real Redis that speaks only TLS ----------------------------------------------------


class TlsRedis:
    def __init__(self, port, proc, admin):
        self.port, self.proc, self.admin = port, proc, admin

    def url(self, host="127.0.0.1", scheme="rediss"):
        return f"{scheme}://{REDIS_USER}@{host}:{self.port}/0"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory, pki):
    """redis-server with `port 0` and a TLS port, its certificate naming 127.0.0.1 only."""
    port = free_port()
    proc, admin = start_redis(
        tmp_path_factory.mktemp("redis-tls"),
        ["--port", "0", "--tls-port", str(port), "--tls-cert-file", pki["cert"], "--tls-key-file", pki["key"],
         "--tls-ca-cert-file", pki["ca"], "--tls-auth-clients", "no", "--tls-protocols", "TLSv1.2 TLSv1.3"],
        port=port, ssl=True, ssl_ca_certs=pki["ca"], ssl_check_hostname=True)
    yield TlsRedis(port, proc, admin)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.mark.server
def test_the_cache_works_over_tls_verified_against_the_ca(tls_redis, pki):
    cfg = config.load({"REDIS_URL": tls_redis.url(), "REDIS_CA_FILE": pki["ca"]})
    cache = Cache(cfg.redis_url, ttl=30, password=REDIS_PASSWORD, ca_file=cfg.redis_ca_file)
    assert cache.status() == "ok"
    assert cache.get_or_load("alerts", ["tls"], lambda: 1) == (1, "MISS")
    assert cache.get_or_load("alerts", ["tls"], lambda: 2) == (1, "HIT")
    cache.invalidate("alerts")
    assert cache.get_or_load("alerts", ["tls"], lambda: 3) == (3, "MISS")
    cache.close()


@pytest.mark.server
@pytest.mark.parametrize("case, reason", [
    ("name not in the certificate", "Hostname mismatch, certificate is not valid for 'localhost'"),
    ("system trust store", "certificate verify failed"),
    ("plain text", "Connection reset by peer"),
])
def test_a_server_that_cannot_be_verified_is_down_not_trusted(tls_redis, pki, case, reason):
    """localhost reaches the server but is not a name its certificate holds; the system
    store does not hold the kit's CA; a plain-text client meets a TLS-only port."""
    url, ca_file = {"name not in the certificate": (tls_redis.url(host="localhost"), pki["ca"]),
                    "system trust store": (tls_redis.url(), None),
                    "plain text": (tls_redis.url(scheme="redis"), None)}[case]
    client = redis.Redis.from_url(url, password=REDIS_PASSWORD, socket_timeout=2, **tls_options(url, ca_file))
    with pytest.raises(redis.ConnectionError, match=reason):
        client.ping()
    client.close()
    cache = Cache(url, ttl=30, password=REDIS_PASSWORD, ca_file=ca_file)
    assert cache.get_or_load("alerts", ["x"], lambda: 1) == (1, "BYPASS")
    assert cache.status() == "down"
    cache.close()
