"""The SQLite side of the migration: the consistent copy, and reading in batches (migration_source)."""

import hashlib
import sqlite3
import threading

import pytest

from ansible_collections.claude_kit.stack.plugins.module_utils import migration_source as ms


def make_db(path, rows=50):
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, data BLOB)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, f"n{i}", bytes([i % 256])) for i in range(1, rows + 1)])
    conn.commit()
    return conn


def test_backup_is_a_readable_copy_with_its_sha256(tmp_path):
    src = tmp_path / "daemon.db"
    make_db(src).close()
    dest = ms.backup_name(str(src), str(tmp_path))
    assert dest.startswith(str(tmp_path / "daemon.db.")) and dest.endswith("Z.backup")
    digest = ms.backup(str(src), dest)
    assert digest == hashlib.sha256(open(dest, "rb").read()).hexdigest()
    copy = ms.open_readonly(dest, immutable=True)
    assert copy.execute("SELECT count(*) FROM t").fetchone()[0] == 50
    assert not (tmp_path / (dest + ".partial")).exists()
    # a second copy in the same second gets another name
    assert ms.backup_name(str(src), str(tmp_path)) != dest


def test_backup_is_consistent_while_another_connection_writes(tmp_path):
    src = tmp_path / "busy.db"
    writer = make_db(src, rows=0)
    writer.close()
    stop = threading.Event()

    def write():
        conn = sqlite3.connect(src, timeout=30)
        n = 0
        while not stop.is_set():
            n += 1
            # two rows per transaction: a consistent copy never holds an odd count
            conn.execute("INSERT INTO t (name) VALUES (?)", (f"a{n}",))
            conn.execute("INSERT INTO t (name) VALUES (?)", (f"b{n}",))
            conn.commit()
        conn.close()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        for i in range(5):
            dest = str(tmp_path / f"copy{i}.db")
            ms.backup(str(src), dest)
            count = sqlite3.connect(dest).execute("SELECT count(*) FROM t").fetchone()[0]
            assert count % 2 == 0
    finally:
        stop.set()
        thread.join()


def test_open_readonly_refuses_writes_and_missing_files(tmp_path):
    src = tmp_path / "ro.db"
    make_db(src).close()
    conn = ms.open_readonly(str(src))
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("INSERT INTO t (name) VALUES ('x')")
    with pytest.raises(ms.SourceError, match="does not exist"):
        ms.open_readonly(str(tmp_path / "nope.db"))
    (tmp_path / "junk.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ms.SourceError, match="cannot read"):
        ms.open_readonly(str(tmp_path / "junk.db"))


def test_reader_streams_batches_and_survives_invalid_utf8(tmp_path):
    src = tmp_path / "bad.db"
    conn = make_db(src, rows=0)
    for i in range(1, 26):
        if i in (7, 8, 19):
            conn.execute("INSERT INTO t VALUES (?, CAST(? AS TEXT), NULL)", (i, b"caf\xe9"))
        else:
            conn.execute("INSERT INTO t VALUES (?, ?, NULL)", (i, f"n{i}"))
    conn.commit()
    conn.close()
    ro = ms.open_readonly(str(src), immutable=True)
    reader = ms.TableReader(ro, "t", ["id", "name"], rowid="rowid", batch_rows=4)
    batches = list(reader.batches())
    rows = [row for batch in batches for row in batch]
    assert all(len(batch) <= 4 for batch in batches)
    assert [row[0] for row in rows] == list(range(1, 26))  # nothing lost, nothing twice
    assert reader.rows_read == 25
    # The batch around a bad value is re-read byte-preserving (bytearray), then str again.
    def valid(value):
        try:
            return bytes(value).decode("utf-8") if isinstance(value, bytearray) else value
        except UnicodeDecodeError:
            return None

    assert {row[0] for row in rows if valid(row[1]) is None} == {7, 8, 19}
    assert all(valid(row[1]) == f"n{row[0]}" for row in rows if row[0] not in (7, 8, 19))
    assert isinstance(rows[0][1], str) and isinstance(rows[-1][1], str)  # fast factory outside those batches
    assert ro.text_factory is str


def test_reader_without_rowid_reads_bytes_preserving(tmp_path):
    src = tmp_path / "worowid.db"
    conn = sqlite3.connect(src)
    conn.execute("CREATE TABLE k (code TEXT PRIMARY KEY, n INT) WITHOUT ROWID")
    conn.execute("INSERT INTO k VALUES (CAST(? AS TEXT), 1), ('ok', 2)", (b"\xff",))
    conn.commit()
    ro = ms.open_readonly(str(src))
    assert ms.rowid_alias(ro, "k", ["code", "n"]) is None
    rows = [row for batch in ms.TableReader(ro, "k", ["code", "n"]).batches() for row in batch]
    assert sorted(rows) == [(bytearray(b"ok"), 2), (bytearray(b"\xff"), 1)]


def test_rowid_alias_avoids_shadowing_columns(tmp_path):
    src = tmp_path / "alias.db"
    conn = sqlite3.connect(src)
    conn.execute('CREATE TABLE "we""ird" (rowid TEXT, x INT)')
    conn.commit()
    ro = ms.open_readonly(str(src))
    assert ms.rowid_alias(ro, 'we"ird', ["rowid", "x"]) == "_rowid_"
    assert ms.list_tables(ro) == ['we"ird']
    assert ms.table_columns(ro, 'we"ird') == [("rowid", "TEXT", 0), ("x", "INT", 0)]
    assert ms.quote_sqlite('we"ird') == '"we""ird"'


def test_archive_renames_the_file_and_its_companions_together(tmp_path):
    src = tmp_path / "d.db"
    for name in ("d.db", "d.db-wal", "d.db-shm"):
        (tmp_path / name).write_text(name)
    stamp = ms.utc_stamp()
    assert ms.backup_name(str(src), str(tmp_path), stamp).endswith(f"d.db.{stamp}.backup")
    target = ms.archive(str(src), stamp)
    assert target == f"{src}.migrated-{stamp}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"d.db.migrated-{stamp}{end}" for end in ("", "-wal", "-shm"))
    assert (tmp_path / f"d.db.migrated-{stamp}-wal").read_text() == "d.db-wal"  # each companion beside its file


def test_archive_replaces_nothing(tmp_path):
    src = tmp_path / "d.db"
    src.write_text("db")
    (tmp_path / "d.db-journal").write_text("hot journal")
    (tmp_path / "d.db.migrated-X-journal").write_text("older")
    with pytest.raises(ms.SourceError, match="exists already"):
        ms.archive(str(src), "X")
    assert src.read_text() == "db" and (tmp_path / "d.db-journal").exists()  # nothing renamed
