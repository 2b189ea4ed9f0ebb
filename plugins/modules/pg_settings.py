#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Module pg_settings: server settings through ALTER SYSTEM, taking back the ones no longer declared."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: pg_settings
short_description: Apply server settings with ALTER SYSTEM and reset the ones the kit no longer declares
description:
  - Makes C(postgresql.auto.conf) hold exactly the declared I(settings), in one call, comparing with
    what the file holds now (C(pg_file_settings)), so a second run changes nothing.
  - Remembers in I(state_file) which settings it manages. A setting it applied earlier and that is no
    longer declared is reset with C(ALTER SYSTEM RESET), and reported as a change.
  - A setting in C(postgresql.auto.conf) that the kit never declared (someone ran C(ALTER SYSTEM) by
    hand) is reported in RV(unmanaged) and left alone.
  - The module does not reload or restart the server; it reports a change so that a handler reloads,
    and the handler then asks PostgreSQL which settings wait for a restart. Setting names are checked
    against C(pg_settings) before anything is changed; an unknown name fails the task with nothing altered.
  - Values are passed as quoted literals, never formatted into the SQL text; names are quoted identifiers.
    A list value becomes a list setting (C(shared_preload_libraries = 'a', 'b')); for the list settings
    whose elements PostgreSQL quotes one by one, a comma-separated string is split the same way.
version_added: "1.1.0"
author:
  - claude-kit maintainers (@claude-kit)
options:
  settings:
    description:
      - Setting name to value. Booleans become C(on)/C(off); numbers and strings are passed as given
        (C(256MB), C(0.9)); a list becomes a list setting.
    type: dict
    required: true
  state_file:
    description:
      - File on the database host listing the settings this module manages (JSON). Written only when
        something changed, atomically; the login user must be able to write its directory.
    type: path
    required: true
  reset_removed:
    description: Reset the managed settings that are no longer in I(settings).
    type: bool
    default: true
  db:
    description: Database to connect to (ALTER SYSTEM is cluster-wide).
    type: str
    default: postgres
extends_documentation_fragment:
  - claude_kit.stack.claude_pg
attributes:
  check_mode:
    support: full
    description: Compares and reports what would change; alters nothing and writes no state.
  diff_mode:
    support: full
    description: The before and after values of every changed setting (settings are not secret).
requirements:
  - psycopg2 on the managed host
  - a superuser login, or a role granted ALTER SYSTEM on the settings (PostgreSQL 15+)
"""

EXAMPLES = r"""
- name: Tune the server and take back settings that were removed from the list
  claude_kit.stack.pg_settings:
    settings:
      shared_buffers: 256MB
      work_mem: 4MB
      shared_preload_libraries: [pg_stat_statements]
    state_file: /var/lib/claude-kit/state/pg_settings.json
  become: true
  become_user: postgres
  register: tuning
  notify: postgresql configuration changed

- name: Say what someone set by hand
  ansible.builtin.debug:
    msg: "ALTER SYSTEM outside the kit: {{ tuning.unmanaged }}"
  when: tuning.unmanaged | length > 0
"""

RETURN = r"""
set:
  description: Settings written with ALTER SYSTEM SET (new or different value).
  returned: always
  type: dict
  sample: {work_mem: 4MB}
reset:
  description: Settings the kit had applied and no longer declares, reset with ALTER SYSTEM RESET.
  returned: always
  type: list
  elements: str
  sample: [log_min_duration_statement]
unmanaged:
  description: Settings in postgresql.auto.conf that the kit never declared; left as they are.
  returned: always
  type: dict
  sample: {log_temp_files: 1MB}
managed:
  description: The settings the kit manages after this run (what I(state_file) holds).
  returned: always
  type: list
  elements: str
queries:
  description: The statements run (or that would run, in check mode), values as passed.
  returned: always
  type: list
  elements: str
  sample: ["ALTER SYSTEM SET \"work_mem\" = '4MB'"]
"""

import json
import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.claude_kit.stack.plugins.module_utils.claude_pg import connect, pg_argument_spec, sql
from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import KitModuleError, end_module

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
# Settings PostgreSQL flags GUC_LIST_QUOTE: ALTER SYSTEM quotes each element,
# so 'a,b' as one literal would become the single name "a,b". Split them.
QUOTED_LISTS = frozenset(
    ["shared_preload_libraries", "session_preload_libraries", "local_preload_libraries",
     "search_path", "temp_tablespaces", "unix_socket_directories"]
)


def value_items(name, value):
    """A declared value -> the list of literals ALTER SYSTEM gets (pure; unit-tested)."""
    if isinstance(value, bool):
        return ["on" if value else "off"]
    if isinstance(value, (list, tuple)):
        items = [str(item).strip() for item in value]
    elif name in QUOTED_LISTS:
        items = [part.strip() for part in str(value).split(",")]
    else:
        return [str(value)]
    return [item for item in items if item]


def file_items(name, text):
    """What pg_file_settings shows for a setting -> comparable list (pure; unit-tested)."""
    if name in QUOTED_LISTS:
        return [part.strip().strip('"') for part in text.split(",") if part.strip()]
    return [text]


def plan(declared, in_file, managed, reset_removed):
    """Decide what to set, reset and report (pure; unit-tested).

    declared: name -> list of literals; in_file: name -> comparable list (the
    auto.conf entries); managed: names the kit applied before.
    """
    to_set = {name: items for name, items in declared.items() if comparable(name, items) != in_file.get(name)}
    removed = sorted(set(managed) - set(declared)) if reset_removed else []
    to_reset = [name for name in removed if name in in_file]
    unmanaged = {name: in_file[name] for name in sorted(in_file) if name not in declared and name not in managed}
    keep = sorted(set(declared) | (set(managed) - set(removed)))
    return to_set, to_reset, unmanaged, keep


def comparable(name, items):
    """Declared literals in the form file_items() gives for the same setting (pure)."""
    if name in QUOTED_LISTS:
        return [item.strip('"') for item in items]
    return [", ".join(items)]


def check_names(cur, names):
    """Fail (KitModuleError) on a malformed name, or one PostgreSQL does not know, before any change."""
    bad = [name for name in names if not NAME_RE.match(name)]
    if bad:
        raise KitModuleError(f"settings: {', '.join(sorted(bad))} not a valid setting name")
    cur.execute("SELECT name FROM pg_settings WHERE name = ANY(%s)", (list(names),))
    known = {row[0] for row in cur.fetchall()}
    # Custom (dotted) settings of a library not yet loaded are not in pg_settings yet.
    unknown = sorted(name for name in names if name not in known and "." not in name)
    if unknown:
        raise KitModuleError(f"settings: {', '.join(unknown)} unknown to this PostgreSQL server (pg_settings)")


def read_auto_conf(cur):
    """name -> value text of every entry of postgresql.auto.conf, the last one winning."""
    cur.execute(
        "SELECT name, setting FROM pg_file_settings"
        " WHERE sourcefile = current_setting('data_directory') || '/postgresql.auto.conf'"
        " ORDER BY seqno"
    )
    return {name: file_items(name, setting) for name, setting in cur.fetchall()}


def read_state(path):
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise KitModuleError(f"state_file {path}: cannot read it ({exc}); fix or remove it") from None
    return [name for name in data.get("managed", []) if isinstance(name, str)]


def write_state(path, managed):
    """Write the managed names atomically (temporary file, fsync, rename)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".pg_settings.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({"managed": managed}, handle, indent=1)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def statements(to_set, to_reset):
    """(sql.Composed, params, text for the result) for every change."""
    out = []
    for name, items in sorted(to_set.items()):
        ident = sql.Identifier(*name.split("."))
        placeholders = sql.SQL(", ").join([sql.Placeholder()] * len(items))
        query = sql.SQL("ALTER SYSTEM SET {} = {}").format(ident, placeholders)
        text = "ALTER SYSTEM SET \"%s\" = %s" % (name, ", ".join("'%s'" % item for item in items))
        out.append((query, items, text))
    for name in to_reset:
        out.append((sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(*name.split("."))), [], f'ALTER SYSTEM RESET "{name}"'))
    return out


def run(module):
    params = module.params
    declared = {str(name): value_items(str(name), value) for name, value in params["settings"].items()}
    managed = read_state(params["state_file"])
    conn = connect(module, params["db"], autocommit=True)
    try:
        cur = conn.cursor()
        check_names(cur, declared)
        in_file = read_auto_conf(cur)
        to_set, to_reset, unmanaged, keep = plan(declared, in_file, managed, params["reset_removed"])
        todo = statements(to_set, to_reset)
        if not module.check_mode:
            for query, args, _text in todo:
                cur.execute(query, args)
    finally:
        conn.close()
    changed = bool(todo)
    if not module.check_mode and (changed or keep != sorted(managed)):
        write_state(params["state_file"], keep)
    diff = {
        "before": {name: in_file.get(name) for name in list(to_set) + to_reset},
        "after": dict({name: comparable(name, items) for name, items in to_set.items()}, **{name: None for name in to_reset}),
    }
    return dict(
        changed=changed,
        set={name: ", ".join(items) for name, items in to_set.items()},
        reset=to_reset,
        unmanaged={name: ", ".join(items) for name, items in unmanaged.items()},
        managed=keep,
        queries=[text for _q, _a, text in todo],
        diff=diff,
    )


def main():
    argument_spec = pg_argument_spec()
    argument_spec.update(
        settings=dict(type="dict", required=True),
        state_file=dict(type="path", required=True),
        reset_removed=dict(type="bool", default=True),
        db=dict(type="str", default="postgres"),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True)
    end_module(module, lambda: run(module))


if __name__ == "__main__":
    main()
