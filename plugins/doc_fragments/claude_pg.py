# -*- coding: utf-8 -*-
"""Documentation of the connection options every kit module shares (module_utils/claude_pg.py)."""


class ModuleDocFragment:
    """Used as `extends_documentation_fragment: [claude_pg]`."""

    DOCUMENTATION = r"""
options:
  login_user:
    description: Role to connect as.
    type: str
    default: postgres
    aliases: [login]
  login_password:
    description: Password of I(login_user); empty for peer authentication on the socket.
    type: str
    default: ""
  login_host:
    description: Host to connect to; empty uses the local socket.
    type: str
    default: ""
  login_unix_socket:
    description: Directory of the local socket.
    type: str
    default: ""
  login_port:
    description: Port (also the socket's suffix).
    type: int
    default: 5432
    aliases: [port]
  ssl_mode:
    description:
      - libpq sslmode for TCP connections (ignored on the socket).
      - Unset, C(verify-full) when I(login_host) is a TCP host (give I(ca_cert); the server's certificate must
        name I(login_host)), C(prefer) on the socket.
    type: str
    choices: [allow, disable, prefer, require, verify-ca, verify-full]
  ca_cert:
    description:
      - CA certificate to verify the server with (libpq sslrootcert). Needed for C(verify-ca) and C(verify-full),
        unless libpq's own default file (~/.postgresql/root.crt) holds it.
    type: path
    aliases: [ssl_rootcert]
  ssl_cert:
    description: Client certificate.
    type: path
  ssl_key:
    description: Client key.
    type: path
  connect_timeout:
    description: Seconds to wait for a connection (to each host of a list).
    type: int
    default: 10
  target_session_attrs:
    description:
      - libpq's target_session_attrs. With several hosts in I(login_host) (C(db1,db2,db3), every member of a
        replicated cluster; I(login_port) applies to each), unset means C(read-write), so that the module
        reaches the primary wherever it is now. Unset with one host, libpq's default (any).
    type: str
    choices: [any, read-write, read-only, primary, standby, prefer-standby]
"""
