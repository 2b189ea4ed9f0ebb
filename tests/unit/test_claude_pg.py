"""claude_pg: connection arguments and identifier checks."""

import pytest
from ansible_collections.claude_kit.stack.plugins.module_utils import claude_pg


def params(**overrides):
    base = {key: spec.get("default") for key, spec in claude_pg.pg_argument_spec().items()}
    base.update(overrides)
    return base


def test_every_password_option_is_no_log():
    spec = claude_pg.pg_argument_spec()
    assert [k for k, v in spec.items() if "password" in k] == ["login_password"]
    assert spec["login_password"]["no_log"] is True


def test_socket_connection_has_no_host_and_no_password():
    kwargs = claude_pg.connect_kwargs(params(), "claude_daemon")
    assert kwargs["dbname"] == "claude_daemon"
    assert "host" not in kwargs and "password" not in kwargs
    assert kwargs["port"] == 5432


def test_tcp_connection_with_tls():
    kwargs = claude_pg.connect_kwargs(
        params(login_host="db1", login_password="s3cret", ssl_mode="verify-full", ca_cert="/ca.pem"), "d"
    )
    assert (kwargs["host"], kwargs["password"], kwargs["sslmode"], kwargs["sslrootcert"]) == ("db1", "s3cret", "verify-full", "/ca.pem")


def test_tcp_without_ssl_mode_verifies_the_server():
    kwargs = claude_pg.connect_kwargs(params(login_host="10.0.0.5", ca_cert="/ca.pem"), "d")
    assert (kwargs["sslmode"], kwargs["sslrootcert"]) == ("verify-full", "/ca.pem")


@pytest.mark.parametrize("socket", [{}, {"login_unix_socket": "/run/postgresql"}, {"login_host": "/var/run/postgresql"}])
def test_socket_without_ssl_mode_keeps_prefer(socket):
    assert claude_pg.connect_kwargs(params(**socket), "d")["sslmode"] == "prefer"


def test_several_hosts_ask_for_the_primary_unless_told_otherwise():
    many = claude_pg.connect_kwargs(params(login_host="10.0.0.11,10.0.0.12"), "d")
    assert (many["host"], many["target_session_attrs"]) == ("10.0.0.11,10.0.0.12", "read-write")
    assert "target_session_attrs" not in claude_pg.connect_kwargs(params(login_host="10.0.0.11"), "d")
    told = claude_pg.connect_kwargs(params(login_host="a,b", target_session_attrs="prefer-standby"), "d")
    assert told["target_session_attrs"] == "prefer-standby"


def test_an_explicit_ssl_mode_wins():
    assert claude_pg.connect_kwargs(params(login_host="127.0.0.1", ssl_mode="disable"), "d")["sslmode"] == "disable"


@pytest.mark.parametrize("name", ["usage_data", "_x", "A1$"])
def test_valid_identifiers(name):
    assert claude_pg.check_identifier(name, "table") == name


@pytest.mark.parametrize("name", ["", "1abc", "a-b", 'x"; DROP TABLE users; --', "a" * 64, None])
def test_invalid_identifiers_name_what_they_are(name):
    with pytest.raises(ValueError, match="table"):
        claude_pg.check_identifier(name, "table")


def test_split_qualified():
    assert claude_pg.split_qualified("alerts", "public") == ("public", "alerts")
    assert claude_pg.split_qualified("claude_kit.schema_migrations", "public") == ("claude_kit", "schema_migrations")
    with pytest.raises(ValueError, match="more than one dot"):
        claude_pg.split_qualified("a.b.c", "public")
