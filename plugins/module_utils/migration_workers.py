# -*- coding: utf-8 -*-
"""Reading and normalising SQLite rows beside the load: a helper thread, or forked worker processes.

produce() reads a table (or a rowid range of it) in batches and normalises them
(migration_normalise) into Items: COPY data ready to send, plus the rejects. The
loader takes Items from a producer while they are being made, so SQLite is read
while PostgreSQL parses the previous batches:

- Producer runs produce() in a helper thread, through a bounded queue;
- ParallelProducer has a large table normalised by several forked processes
  (the normalisation is CPU-bound Python, so threads would share one CPU), each
  taking every n-th rowid range, and hands the Items back in rowid order.

fork_workers() starts forked processes for this module and for the verification's
digests (migration_digest). Its fd hygiene: a worker closes at once the
descriptors it must not keep (close_inherited): the PostgreSQL connection's socket
(if the parent were killed, a child holding it would keep the server's session and
its locks alive) and the read ends of the pipes (which would hide the parent's
death from it: it fails on its next send instead).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import queue
import threading

from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import KitModuleError
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_encoding import copy_data, show_value
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_normalise import normalise_batch
from ansible_collections.claude_kit.stack.plugins.module_utils.migration_source import BATCH_ROWS, open_readonly

QUEUE_BATCHES = 6  # Items queued by the helper thread
PARALLEL_MIN_ROWS = 50_000  # smaller tables are not worth forking for
PARALLEL_QUEUE = 2  # Items queued per worker process


# -- forked processes and their descriptors ------------------------------------------------


def close_inherited(fds):
    """In a forked process: close descriptors inherited from the parent that must not stay
    open here (see the module's docstring). SQLite's own descriptors are left alone:
    SQLite tracks them per process and closing them under it breaks its locking."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def connection_fds(conn):
    """[the socket's descriptor] of a psycopg2 connection, for close_inherited; [] when it has none."""
    try:
        return [conn.fileno()]
    except Exception:  # closed or not a psycopg2 connection: nothing to close
        return []


def _child(target, send, close_fds, job):
    """A forked process's life: close what it must not hold, run target(send, *job), report any error."""
    try:
        close_inherited(close_fds)
        target(send, *job)
    except BaseException as exc:  # reported by the parent, which fails the run
        try:
            send.send(("error", f"{type(exc).__name__}: {exc}"))
        except OSError:  # the parent has gone away
            pass
    finally:
        send.close()


def fork_workers(target, jobs, close_fds=(), name="sqlite-worker"):
    """One forked process per job, running target(send, *job) with send the write end of
    its pipe; returns [(process, read end)]. Each closes close_fds and the read ends of the
    pipes made so far, its own included. Fork before starting threads that hold locks."""
    ctx = multiprocessing.get_context("fork")
    inherited = list(close_fds)
    started = []
    for n, job in enumerate(jobs):
        receive, send = ctx.Pipe(duplex=False)
        inherited.append(receive.fileno())
        proc = ctx.Process(target=_child, args=(target, send, list(inherited), job), name=f"{name}-{n}", daemon=True)
        proc.start()
        send.close()
        started.append((proc, receive))
    return started


# -- producing normalised batches --------------------------------------------------------


class Item:
    """One normalised batch: data (COPY bytes) or lines, n rows in it, keys for append
    mode, rowids for reports on tables without a primary key, rows read, rejects."""

    __slots__ = ("data", "lines", "n", "keys", "rowids", "read", "rejects")

    def __init__(self, data, lines, n, keys, rowids, read, rejects):
        self.data = data
        self.lines = lines
        self.n = n
        self.keys = keys
        self.rowids = rowids
        self.read = read
        self.rejects = rejects


def _rejects_of(plan, rows, batch):
    out = []
    for index in sorted(batch.bad):
        key = plan.key_of(rows[index])
        problems = [(plan.columns[c]["name"], show_value(v), reason) for c, v, reason in batch.bad[index]]
        out.append((key, problems))
    return out


def produce(plan, sconn, want_lines=False, want_keys=False, batch_rows=None, where="", params=()):
    """Items of normalised rows of a table, or of the rows matching where (generator;
    used in the helper thread or in the worker processes)."""
    kwargs = {"batch_rows": batch_rows} if batch_rows else {}
    reader = plan.reader(sconn, where, params, **kwargs)
    keep_rowids = not plan.pk and plan.rowid
    at = plan.rowid_index
    for rows in reader.batches():
        batch = normalise_batch(plan.load_converters, rows)
        rejects = _rejects_of(plan, rows, batch) if batch.bad else []
        keys = list(zip(*[batch.column(i) for i in plan.pk])) if want_keys else None
        rowids = [rows[i][at] for i in batch.good()] if keep_rowids else None
        data = None if want_lines else copy_data(batch.lines)
        yield Item(data, batch.lines if want_lines else None, len(batch.lines), keys, rowids, batch.size, rejects)


class Producer:
    """Runs a generator in a helper thread, through a bounded queue."""

    _END = object()

    def __init__(self, generator, maxsize=QUEUE_BATCHES):
        self._gen = generator
        self._queue = queue.Queue(maxsize=maxsize)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-reader", daemon=True)
        self._thread.start()

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self):
        try:
            for item in self._gen:
                if not self._put(item):
                    return
            self._put(self._END)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(("error", exc))

    def __iter__(self):
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, tuple) and item[0] == "error":
                raise item[1]
            yield item

    def close(self):
        self._stop.set()
        self._thread.join(timeout=30)


# -- worker processes for a large table ------------------------------------------------------


def chunk_ranges(extent, batch_rows=None):
    """[low, high) rowid ranges of about batch_rows rows each (extent: TablePlan.extent), in rowid order, or None
    when the table is too small to be worth forking for (or has no rowid)."""
    low, high, count = extent
    if low is None or count < PARALLEL_MIN_ROWS:
        return None
    batch_rows = batch_rows or BATCH_ROWS
    step = max(1, int((high - low + 1) * batch_rows / count))
    ranges = [(start, start + step) for start in range(low, high + 1, step)]
    ranges[-1] = (ranges[-1][0], None)  # open-ended: see TablePlan.rowid_range
    return ranges


def _chunk_worker(send, path, plan, ranges, want_lines, want_keys, batch_rows):
    """In a forked process: normalise every range of `ranges` and send its items (one
    message per batch, then one that closes the range: memory stays bounded even when
    a range holds far more rows than the average)."""
    sconn = open_readonly(path, immutable=True)
    gc.disable()
    for low, high in ranges:
        where, params = plan.rowid_range(low, high)
        for i in produce(plan, sconn, want_lines, want_keys, batch_rows, where, params):
            send.send(("item", (i.data, i.lines, i.n, i.keys, i.rowids, i.read, i.rejects)))
        send.send(("range", None))
    send.send(("end", None))


class ParallelProducer:
    """Items of a large table normalised by several forked processes, in rowid order.

    Each worker opens the consistent copy of the SQLite file itself and takes every
    n-th rowid range; a thread per worker receives its messages into a bounded
    queue, and iteration takes the ranges back in order, so the rows reach COPY in
    the same order as with one process and memory stays bounded (at most
    PARALLEL_QUEUE + 2 batches per worker in flight). The workers only read the
    file and are forked before this producer's threads start (the only other
    thread then is the one hashing the copy, whose objects they never touch).
    """

    def __init__(self, plan, path, ranges, workers, want_lines=False, want_keys=False, batch_rows=None, close_fds=()):
        self._ranges = len(ranges)
        self._stop = threading.Event()
        jobs = [(path, plan, ranges[n::workers], want_lines, want_keys, batch_rows) for n in range(workers)]
        self._workers = [(proc, receive, queue.Queue(maxsize=PARALLEL_QUEUE))
                         for proc, receive in fork_workers(_chunk_worker, jobs, close_fds, name="sqlite-normalise")]
        self._threads = [threading.Thread(target=self._receive, args=(w,), name=f"sqlite-receive-{n}", daemon=True)
                         for n, w in enumerate(self._workers)]
        for thread in self._threads:
            thread.start()

    def _receive(self, worker):
        proc, receive, out = worker
        while not self._stop.is_set():
            try:
                message = receive.recv()
            except (EOFError, OSError):
                proc.join(timeout=5)
                message = ("error", f"worker process {proc.pid} ended without a result (exit code {proc.exitcode})")
            except BaseException as exc:  # anything else must reach the consumer too, or it would wait for ever
                message = ("error", f"receiving from worker process {proc.pid} failed: {type(exc).__name__}: {exc}")
            while not self._stop.is_set():
                try:
                    out.put(message, timeout=0.2)
                    break
                except queue.Full:
                    continue
            if message[0] not in ("item", "range"):
                return

    def __iter__(self):
        for index in range(self._ranges):
            out = self._workers[index % len(self._workers)][2]
            while True:
                kind, payload = out.get()
                if kind == "range":
                    break
                if kind == "error":
                    raise KitModuleError("reading the SQLite copy failed: " + payload)
                if kind != "item":
                    raise KitModuleError("a worker process stopped early")
                yield Item(*payload)

    def close(self):
        self._stop.set()
        for proc, receive, _out in self._workers:
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=30)
            receive.close()
        for thread in self._threads:
            thread.join(timeout=30)


def table_producer(plan, sconn, path, extent, workers, want_keys=False, close_fds=()):
    """(producer of a table's Items, processes normalising them): worker processes for a
    large table with a rowid when workers > 1, else the helper thread (1). want_keys:
    append mode (lines and keys instead of COPY data: rows are left out before sending)."""
    ranges = chunk_ranges(extent) if workers > 1 else None
    if ranges:
        return ParallelProducer(plan, path, ranges, workers, want_keys, want_keys, close_fds=close_fds), workers
    return Producer(produce(plan, sconn, want_lines=want_keys, want_keys=want_keys)), 1
