"""Pure parts of the migration: foreign-key order, row hashes, the reject report, COPY error parsing."""

import json
import random

import pytest

from ansible_collections.claude_kit.stack.plugins.module_utils import migration_copy as mc
from ansible_collections.claude_kit.stack.plugins.module_utils import migration_digest as md
from ansible_collections.claude_kit.stack.plugins.module_utils import migration_plan as mp
from ansible_collections.claude_kit.stack.plugins.module_utils import migration_workers as mw


def test_fk_order_puts_parents_first():
    edges = [("usage_data", "users"), ("alerts", "users"), ("predictions", "users"), ("users", "users")]
    order = mp.fk_order(["usage_data", "alerts", "users", "predictions"], edges)
    assert order[0] == "users"
    assert order == ["users", "alerts", "predictions", "usage_data"]  # ties by name


def test_fk_order_chain_and_cycle():
    assert mp.fk_order(["c", "b", "a"], [("c", "b"), ("b", "a")]) == ["a", "b", "c"]
    with pytest.raises(mp.PlanError, match="cycle between tables a, b"):
        mp.fk_order(["a", "b", "z"], [("a", "b"), ("b", "a")])


def test_row_hashes_are_order_independent_and_sensitive():
    lines = [f"{i}\tuser{i}\t2024-01-01 00:00:0{i % 10}" for i in range(1000)]
    total = md.lines_hash(lines)
    shuffled = lines[:]
    random.Random(1).shuffle(shuffled)
    assert md.lines_hash(shuffled) == total
    assert md.lines_hash(lines[:500]) + md.lines_hash(lines[500:]) & md.MASK == total
    assert total == sum(md.line_hash(line) for line in lines) & md.MASK
    changed = lines[:]
    changed[10] = changed[10].replace("user10", "user1O")
    assert md.lines_hash(changed) != total
    assert md.lines_hash(lines + [lines[3]]) != total  # a duplicate row counts
    # PostgreSQL's ('x' || substr(md5('abc'), 1, 16))::bit(64)::bigint is -8070080442485551184
    assert md.line_hash("abc") == -8070080442485551184 & md.MASK


def test_reject_log_writes_every_reject_and_keeps_the_first(tmp_path, monkeypatch):
    monkeypatch.setattr(mc, "KEEP_IN_RESULT", 3)
    path = str(tmp_path / "r.json")
    log = mc.RejectLog(path, {"source": "/x.db", "mode": "empty"})
    for n in range(5):
        log.add("alerts", {"id": f"a{n}"}, "timestamp", repr("2024-02-30"), "not a valid date ü", "conversion")
        log.count_row("alerts")
    assert not (tmp_path / "r.json").exists()  # written under a temporary name until complete
    assert log.close({"rejected_rows": 5}) == path
    report = json.load(open(path, encoding="utf-8"))
    assert report["source"] == "/x.db"
    assert [r["key"]["id"] for r in report["rejects"]] == ["a0", "a1", "a2", "a3", "a4"]
    assert report["rejects"][0]["reason"] == "not a valid date ü"
    assert report["rejected_rows"] == {"alerts": 5}
    assert len(log.kept) == 3 and log.entries == 5 and log.total_rows == 5


def test_empty_reject_log_is_valid_json(tmp_path):
    path = str(tmp_path / "r.json")
    log = mc.RejectLog(path, {"source": "s"})
    log.close({})
    assert json.load(open(path))["rejects"] == []
    assert mc.RejectLog(None, {}).close({}) is None


class FakeDiag:
    def __init__(self, context):
        self.context = context


class FakeError(Exception):
    def __init__(self, context, pgcode="23514"):
        super().__init__("boom")
        self.diag = FakeDiag(context)
        self.pgcode = pgcode


def test_copy_error_location():
    assert mc._where(FakeError('COPY alerts, line 17, column level: "critical"')) == (17, "level")
    assert mc._where(FakeError("COPY usage_data, line 3")) == (3, None)
    assert mc._where(FakeError(None)) == (None, None)
    assert mc._row_level(FakeError("", "23503")) and mc._row_level(FakeError("", "22P02"))
    assert not mc._row_level(FakeError("", "42501")) and not mc._row_level(FakeError("", "57014"))


def test_chunk_reader_hands_out_chunks_then_eof():
    reader = mc._Chunks([b"a\n", b"b\n"])
    assert [reader.read(8192), reader.read(8192), reader.read(8192)] == [b"a\n", b"b\n", b""]


def test_producer_passes_errors_and_stops():
    def gen():
        yield 1
        yield 2
        raise ValueError("source broke")

    producer = mw.Producer(gen(), maxsize=1)
    seen = []
    with pytest.raises(ValueError, match="source broke"):
        for item in producer:
            seen.append(item)
    producer.close()
    assert seen == [1, 2]

    def endless():
        n = 0
        while True:
            n += 1
            yield n

    producer = mw.Producer(endless(), maxsize=2)
    first = next(iter(producer))
    producer.close()  # the helper thread ends although the generator would not
    assert first == 1 and not producer._thread.is_alive()


def test_fingerprint_sees_writes_but_not_an_empty_wal(tmp_path):
    import sqlite3

    from conftest import load

    ver = load("plugins/modules/migration_verify.py", "migration_verify_for_logic")
    db = str(tmp_path / "d.db")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()  # the last connection checkpoints and removes the WAL
    before = ver.fingerprint(db)
    open(db + "-wal", "wb").close()  # what a read-only opener may leave behind
    assert ver.fingerprint(db) == before
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()  # in the WAL, not yet in the file
    assert ver.fingerprint(db) != before
    conn.close()


@pytest.mark.parametrize("module", ["sqlite_to_postgres", "migration_verify"])
def test_ansible_doc_renders(module):
    import os
    import shutil
    import subprocess
    import sys

    from conftest import ROOT
    from test_sqlite_to_postgres_pg import ansible_env

    env = ansible_env()
    out = subprocess.run([(shutil.which("ansible-doc") or os.path.join(os.path.dirname(sys.executable), "ansible-doc")), "-M", str(ROOT / "plugins" / "modules"), module],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "login_password" in out.stdout and "RETURN VALUES" in out.stdout.upper()
