#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Module pg_schema_migrate: versioned, transactional schema migrations."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_schema_migrate
short_description: Apply a versioned schema (schema.sql plus numbered migrations) to PostgreSQL
description:
  - Reads C(schema.sql) (version 1) and numbered migrations beside it, named
    C(NNNN_name.sql) with NNNN greater than 1, from I(path) on the managed host.
  - Records applied versions, their names and sha256 checksums in a tracking table
    (C(claude_kit.schema_migrations) by default) and applies each pending version once, in
    version order, each in its own transaction together with its tracking row. A failing
    migration is rolled back whole and the task fails naming the file; versions applied
    before it stay applied.
  - Migrations run with C(SET ROLE) I(owner_role), so every object they create is owned by
    that role and not by the connecting superuser.
  - Refuses to run when an applied file was changed afterwards (checksum differs) or when the
    database records a version for which there is no file; both mean the files and the database
    disagree about what the schema is, which an operator has to resolve.
  - A session advisory lock keeps two runs from migrating the same database at once.
version_added: "1.0.0"
author:
  - claude-kit maintainers (@claude-kit)
options:
  path:
    description: Directory on the managed host holding C(schema.sql) and the migrations.
    type: path
    required: true
  db:
    description: Database to migrate.
    type: str
    required: true
  owner_role:
    description: Role the migrations run as (C(SET ROLE)); it owns what they create. Empty runs as the login role.
    type: str
    default: ""
  tracking_table:
    description: Schema-qualified name of the tracking table. Its schema is created, owned by I(owner_role).
    type: str
    default: claude_kit.schema_migrations
extends_documentation_fragment:
  - claude_kit.stack.claude_pg
attributes:
  check_mode:
    support: full
    description: Reports the versions that would be applied and writes nothing.
  diff_mode:
    support: none
    description: Not supported.
requirements:
  - psycopg2 on the managed host
"""

EXAMPLES = r"""
- name: Apply the schema as the owner role
  claude_kit.stack.pg_schema_migrate:
    path: /var/lib/claude-kit/schema
    db: claude_daemon
    owner_role: claude_owner
  become: true
  become_user: postgres
"""

RETURN = r"""
applied:
  description: Versions applied by this run (in check mode, those that would be).
  returned: always
  type: list
  elements: dict
  sample: [{"version": 2, "name": "add_index", "file": "0002_add_index.sql", "checksum": "9f86d0..."}]
pending:
  description: Versions that were pending before the run.
  returned: always
  type: list
  elements: int
  sample: [2]
current_version:
  description: Highest applied version after the run (in check mode, what it would be).
  returned: always
  type: int
  sample: 2
versions:
  description: Every version known from the files, in order.
  returned: always
  type: list
  elements: int
  sample: [1, 2]
"""

# Imports follow the documentation, as Ansible wants them (ansible-test validate-modules).
import hashlib
import os
import re

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.claude_kit.stack.plugins.module_utils.claude_pg import (
    check_identifier,
    connect,
    pg_argument_spec,
    split_qualified,
    sql,
)
from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import KitModuleError, end_module

BASELINE = "schema.sql"
MIGRATION_RE = re.compile(r"^(\d{4})_([A-Za-z0-9_-]+)\.sql$")
# Any number reserves this lock; it only has to be the same for every run.
ADVISORY_LOCK_KEY = 0x636C6B74  # "clkt"


class PlanError(KitModuleError):
    """The files and the database disagree, or a file name is invalid."""


def discover(filenames):
    """File names -> [(version, name, filename)] sorted; other files are ignored.

    schema.sql is version 1; NNNN_name.sql is version NNNN (> 1, unique).
    """
    found = {}
    for filename in filenames:
        if filename == BASELINE:
            version, name = 1, "schema"
        else:
            match = MIGRATION_RE.match(filename)
            if not match:
                if filename.endswith(".sql"):
                    raise PlanError(f"{filename}: a migration must be named NNNN_name.sql (four digits)")
                continue
            version, name = int(match.group(1)), match.group(2)
            if version <= 1:
                raise PlanError(f"{filename}: version 1 is schema.sql; migrations start at 0002")
        if version in found:
            raise PlanError(f"{filename} and {found[version][2]} both claim version {version}")
        found[version] = (version, name, filename)
    if found and 1 not in found:
        raise PlanError(f"{BASELINE} (version 1) is missing")
    return [found[v] for v in sorted(found)]


def checksum(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def plan(files, applied):
    """files: [(version, name, filename, checksum)]; applied: {version: checksum}.

    Returns the pending entries, in order. Raises PlanError when an applied file
    changed or when the database has a version that no file provides.
    """
    by_version = {entry[0]: entry for entry in files}
    for version, recorded in sorted(applied.items()):
        if version not in by_version:
            raise PlanError(
                f"the database records schema version {version}, but no file provides it: "
                "deploy the kit's files that match this database"
            )
        if by_version[version][3] != recorded:
            raise PlanError(
                f"{by_version[version][2]} was changed after it was applied (checksum differs): "
                "write a new numbered migration instead of editing an applied one"
            )
    return [entry for entry in files if entry[0] not in applied]


def read_files(params):
    """[(version, name, filename, checksum, text)] of the directory's migrations, in order."""
    if not os.path.isdir(params["path"]):
        raise PlanError(f"path {params['path']} is not a directory")
    files = []
    try:
        for version, name, filename in discover(sorted(os.listdir(params["path"]))):
            with open(os.path.join(params["path"], filename), encoding="utf-8") as handle:
                text = handle.read()
            files.append((version, name, filename, checksum(text), text))
    except (OSError, UnicodeDecodeError) as exc:
        raise KitModuleError(str(exc)) from None
    if not files:
        raise KitModuleError(f"no {BASELINE} in {params['path']}")
    return files


def applied_versions(conn, cur, tracking, track_schema, track_table):
    """(whether the tracking table exists, {version: checksum} it records)."""
    cur.execute("SELECT to_regclass(%s)", (f'"{track_schema}"."{track_table}"',))
    exists = cur.fetchone()[0] is not None
    applied = {}
    if exists:
        cur.execute(sql.SQL("SELECT version, checksum FROM {}").format(tracking))
        applied = dict(cur.fetchall())
    conn.commit()
    return exists, applied


def create_tracking(conn, cur, tracking, track_schema, owner):
    with conn:  # one transaction
        cur.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}{}").format(
                sql.Identifier(track_schema),
                sql.SQL(" AUTHORIZATION {}").format(sql.Identifier(owner)) if owner else sql.SQL(""),
            )
        )
        cur.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " version integer PRIMARY KEY,"
                " name text NOT NULL,"
                " checksum char(64) NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now(),"
                " applied_by text NOT NULL DEFAULT current_user)"
            ).format(tracking)
        )
        if owner:
            cur.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(tracking, sql.Identifier(owner)))


def apply(conn, cur, tracking, owner, entry, result):
    """Run one migration file and record it, in one transaction; a failure rolls both back."""
    version, name, filename, digest, text = entry
    try:
        with conn:  # the migration and its tracking row commit together, or neither does
            if owner:
                cur.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
            cur.execute(text)
            cur.execute(sql.SQL("INSERT INTO {} (version, name, checksum) VALUES (%s, %s, %s)").format(tracking), (version, name, digest))
    except Exception as exc:  # psycopg2.Error, but also a SET ROLE failure
        done = [a for a in result["applied"] if a["version"] < version]
        raise KitModuleError(f"{filename} (version {version}) failed and was rolled back: {str(exc).strip()}",
                             dict(applied=done, pending=result["pending"])) from None


def pending_result(files, applied, exists):
    """What the run applies (the module's result), or PlanError when the files and the database disagree."""
    try:
        pending = {p[0] for p in plan([f[:4] for f in files], applied)}
    except PlanError as exc:
        exc.result = dict(versions=[f[0] for f in files])
        raise
    todo = [f for f in files if f[0] in pending]
    return todo, dict(
        changed=bool(todo) or not exists,
        pending=[f[0] for f in todo],
        applied=[dict(version=f[0], name=f[1], file=f[2], checksum=f[3]) for f in todo],
        versions=[f[0] for f in files],
        current_version=max(f[0] for f in files),
    )


def migrate(module):
    params = module.params
    try:
        track_schema, track_table = split_qualified(params["tracking_table"], "public")
        owner = check_identifier(params["owner_role"], "owner_role") if params["owner_role"] else ""
    except ValueError as exc:
        raise KitModuleError(str(exc)) from None
    files = read_files(params)
    tracking = sql.Identifier(track_schema, track_table)
    # Not autocommit: every `with conn:` below is one transaction.
    conn = connect(module, params["db"], autocommit=False)
    cur = conn.cursor()
    with conn:  # a session-level lock outlives this transaction
        cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
    try:
        exists, applied = applied_versions(conn, cur, tracking, track_schema, track_table)
        todo, result = pending_result(files, applied, exists)
        if module.check_mode:
            return result
        if not exists:
            create_tracking(conn, cur, tracking, track_schema, owner)
        for entry in todo:
            apply(conn, cur, tracking, owner, entry, result)
    finally:
        conn.rollback()
        conn.autocommit = True
        cur.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_LOCK_KEY,))
        conn.close()
    return result


def main():
    module = AnsibleModule(
        argument_spec=dict(
            pg_argument_spec(),
            path=dict(type="path", required=True),
            db=dict(type="str", required=True),
            owner_role=dict(type="str", default=""),
            tracking_table=dict(type="str", default="claude_kit.schema_migrations"),
        ),
        supports_check_mode=True,
    )
    end_module(module, lambda: migrate(module))


if __name__ == "__main__":
    main()
