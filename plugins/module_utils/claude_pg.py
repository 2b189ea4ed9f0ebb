# -*- coding: utf-8 -*-
"""What the kit's PostgreSQL modules share: connection options, connecting, identifiers.

Options mirror community.postgresql's (login_user, login_password, login_host,
login_unix_socket, login_port, ssl_mode, ca_cert, ...), so a play can pass the
same values to both. Passwords are always no_log.
"""

from __future__ import annotations

import re

from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import KitModuleError

try:
    import psycopg2
    from psycopg2 import sql  # pylint: disable=unused-import  # re-exported: the modules import sql from here

    HAS_PSYCOPG2 = True
    PSYCOPG2_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - reported through the module
    HAS_PSYCOPG2 = False
    PSYCOPG2_IMPORT_ERROR = exc
    psycopg2 = None
    sql = None

# Identifiers the kit accepts from users: what PostgreSQL accepts unquoted, up
# to its 63-byte limit. They are still always passed quoted (sql.Identifier).
IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")


def pg_argument_spec():
    """Connection options, as in community.postgresql's modules."""
    return dict(
        login_user=dict(type="str", default="postgres", aliases=["login"]),
        login_password=dict(type="str", default="", no_log=True),
        login_host=dict(type="str", default=""),
        login_unix_socket=dict(type="str", default=""),
        login_port=dict(type="int", default=5432, aliases=["port"]),
        # No fixed default: unset means verify-full over TCP (with ca_cert, the
        # server's certificate must name login_host) and prefer on the socket,
        # where libpq ignores it (ssl_mode_for).
        ssl_mode=dict(
            type="str",
            choices=["allow", "disable", "prefer", "require", "verify-ca", "verify-full"],
        ),
        ca_cert=dict(type="path", aliases=["ssl_rootcert"]),
        ssl_cert=dict(type="path"),
        ssl_key=dict(type="path"),
        connect_timeout=dict(type="int", default=10),
        # Several hosts in login_host (a replicated cluster's members, a,b,c):
        # unset means read-write, so that a module finds the primary.
        target_session_attrs=dict(
            type="str",
            choices=["any", "read-write", "read-only", "primary", "standby", "prefer-standby"],
        ),
    )


def ssl_mode_for(params, host):
    """The sslmode: the one given, else verify-full for a TCP host and prefer for the socket.

    A host starting with "/" is a socket directory to libpq, as is no host at all.
    """
    if params.get("ssl_mode"):
        return params["ssl_mode"]
    return "verify-full" if host and not host.startswith("/") else "prefer"


def connect_kwargs(params, db):
    """psycopg2.connect() keyword arguments from module params (pure; unit-tested)."""
    host = params.get("login_host") or params.get("login_unix_socket")
    kwargs = {
        "dbname": db,
        "user": params.get("login_user") or None,
        "password": params.get("login_password") or None,
        "port": params.get("login_port"),
        "sslmode": ssl_mode_for(params, host),
        "sslrootcert": params.get("ca_cert"),
        "sslcert": params.get("ssl_cert"),
        "sslkey": params.get("ssl_key"),
        "connect_timeout": params.get("connect_timeout"),
        "application_name": "claude-kit",
        "target_session_attrs": params.get("target_session_attrs")
        or ("read-write" if host and "," in host else None),
    }
    if host:
        kwargs["host"] = host
    return {key: value for key, value in kwargs.items() if value not in (None, "")}


def ensure_psycopg2():
    if not HAS_PSYCOPG2:
        raise KitModuleError(
            "psycopg2 is required on the managed host (Debian: python3-psycopg2)", {"exception": str(PSYCOPG2_IMPORT_ERROR)}
        )


def connect(module, db, autocommit=False):
    """Connect, or raise KitModuleError with a message that says where it tried."""
    ensure_psycopg2()
    kwargs = connect_kwargs(module.params, db)
    try:
        conn = psycopg2.connect(**kwargs)
    except psycopg2.Error as exc:
        where = kwargs.get("host", "the local socket")
        raise KitModuleError(f"cannot connect to database {db!r} on {where} port {kwargs.get('port')}: {exc}".strip()) from None
    conn.autocommit = autocommit
    return conn


def check_identifier(name, what):
    """Return name if it is a plain identifier, else raise ValueError naming `what`."""
    if not isinstance(name, str) or not IDENTIFIER_RE.match(name):
        raise ValueError(f"{what} {name!r} is not a valid identifier (letters, digits, _ and $; at most 63)")
    return name


def split_qualified(name, default_schema):
    """'schema.table' or 'table' -> (schema, table), both checked."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"table name {name!r} is empty or not a string")
    parts = name.split(".")
    if len(parts) == 1:
        schema, table = default_schema, parts[0]
    elif len(parts) == 2:
        schema, table = parts
    else:
        raise ValueError(f"table name {name!r} has more than one dot")
    return check_identifier(schema, "schema"), check_identifier(table, "table")
