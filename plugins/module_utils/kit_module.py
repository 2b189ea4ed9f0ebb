# -*- coding: utf-8 -*-
"""What every module of the kit shares: its one failure type and its one ending,
the CPU count, the report table, timing.

A module's main() builds its AnsibleModule and hands the work to end_module():

    def main():
        module = AnsibleModule(argument_spec=..., supports_check_mode=True)
        end_module(module, lambda: work(module))

work() returns the result (exit_json's keywords) or raises KitModuleError, whose
message and result so far become fail_json's. No other path ends a module.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time

# The guide's "Migration Verification" table: pg_row_counts and migration_verify print it.
VERIFICATION_COLUMNS = ("table_name", "record_count", "oldest_record", "newest_record")


class KitModuleError(Exception):
    """The module fails with msg; result: the result so far (fail_json's other keys).

    result is kept by reference, so what the code that raised it adds while unwinding
    (in a finally: block, say) still reaches fail_json.
    """

    def __init__(self, msg, result=None):
        super().__init__(msg)
        self.msg = msg
        self.result = result if result is not None else {}


def end_module(module, work):
    """End the module: exit_json(**work()), or fail_json with a KitModuleError's message and result."""
    try:
        result = work()
    except KitModuleError as exc:
        module.fail_json(msg=exc.msg, **exc.result)
    module.exit_json(**result)


def cpu_count():
    """The CPUs this process may run on (its affinity), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cpu_workers(requested=0, most=4):
    """Processes for a CPU-bound job: requested, or with 0 the CPUs this process may use, at most `most`."""
    if requested:
        return requested
    return max(1, min(most, cpu_count()))


def render_table(columns, rows, right_aligned=()):
    """Rows (dicts) -> text lines: the column names, then a line per row; cells padded to
    the widest of their column and joined by " | ", None blank, trailing blanks cut. The
    cells (not the header) of the columns named in right_aligned are right-aligned."""
    cells = [list(columns)] + [["" if row.get(c) is None else str(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    right = [column in right_aligned for column in columns]
    lines = []
    for n, line in enumerate(cells):
        parts = [cell.rjust(width) if n and r else cell.ljust(width) for cell, width, r in zip(line, widths, right)]
        lines.append(" | ".join(parts).rstrip())
    return lines


@contextlib.contextmanager
def gc_paused():
    """Pause the cyclic garbage collector while streaming: the rows are tuples and strings
    that never form cycles, and collecting after every few thousand of them costs ~10%."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Timer:
    """Seconds since it was made, rounded to the millisecond."""

    def __init__(self):
        self.start = time.monotonic()

    @property
    def seconds(self):
        return round(time.monotonic() - self.start, 3)
