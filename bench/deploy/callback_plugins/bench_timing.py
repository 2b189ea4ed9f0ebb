# Per-host task timings for bench/deploy/run.py (not part of the collection).
# The stdout callback ansible.posix.json gives each task's wall time (start of
# the task to its last host's result); this one adds, for every host and task,
# when the host's worker was started and when its result came back, so that the
# bench can sum a task's time over the hosts it ran on and count its runs.
# One JSON object per line, in the file named by BENCH_DEPLOY_TIMING_FILE.
from __future__ import annotations

DOCUMENTATION = """
    name: bench_timing
    type: aggregate
    short_description: per-host task timings for bench/deploy (JSON lines)
    description:
      - Writes one JSON line per host and task result to the file named by the
        environment variable BENCH_DEPLOY_TIMING_FILE. Used by bench/deploy/run.py only.
    requirements:
      - enabled in callbacks_enabled
"""

import json
import os
import time

from ansible.plugins.callback import CallbackBase


def _get(obj, *names):
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    return None


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        path = os.environ.get("BENCH_DEPLOY_TIMING_FILE")
        self._out = open(path, "a", encoding="utf-8") if path else None  # open for the whole run (line-buffered, flushed on every write); the OS closes it at exit
        self._play = None
        self._play_index = -1
        self._task_start = {}
        self._host_start = {}
        self._items = {}

    def _write(self, record):
        if self._out is None:
            return
        self._out.write(json.dumps(record, sort_keys=True) + "\n")
        self._out.flush()

    def v2_playbook_on_play_start(self, play):
        self._play_index += 1
        self._play = play.get_name()
        self._write({"event": "play", "play_index": self._play_index, "play": self._play,
                     "time": time.time()})

    def _on_task_start(self, task, handler):
        self._task_start[task._uuid] = time.time()
        self._write({"event": "task", "play_index": self._play_index, "task": task.get_name(),
                     "path": task.get_path(), "action": task.action, "handler": handler,
                     "id": task._uuid, "time": self._task_start[task._uuid]})

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._on_task_start(task, False)

    def v2_playbook_on_handler_task_start(self, task):
        self._on_task_start(task, True)

    def v2_runner_on_start(self, host, task):
        self._host_start[(host.get_name(), task._uuid)] = time.time()

    def _on_item(self, result):
        host, task = _get(result, "host", "_host"), _get(result, "task", "_task")
        key = (host.get_name(), task._uuid)
        self._items[key] = self._items.get(key, 0) + 1

    v2_runner_item_on_ok = _on_item
    v2_runner_item_on_failed = _on_item
    v2_runner_item_on_skipped = _on_item

    def _on_result(self, result, status):
        now = time.time()
        host, task = _get(result, "host", "_host"), _get(result, "task", "_task")
        data = _get(result, "result", "_result") or {}
        key = (host.get_name(), task._uuid)
        start = self._host_start.pop(key, self._task_start.get(task._uuid, now))
        self._write({
            "event": "result", "play_index": self._play_index, "play": self._play,
            "host": host.get_name(), "task": task.get_name(), "path": task.get_path(),
            "action": task.action, "id": task._uuid, "status": status,
            "changed": bool(data.get("changed", False)),
            "skipped": bool(data.get("skipped", False)) or status == "skipped",
            "items": self._items.pop(key, 0),
            "attempts": data.get("attempts") if isinstance(data.get("attempts"), int) else None,
            "delegate_to": task.delegate_to if isinstance(task.delegate_to, str) else None,
            "start": start, "end": now,
        })

    def v2_runner_on_ok(self, result):
        self._on_result(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._on_result(result, "ignored" if ignore_errors else "failed")

    def v2_runner_on_skipped(self, result):
        self._on_result(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._on_result(result, "unreachable")

    def v2_playbook_on_stats(self, stats):
        self._write({"event": "end", "time": time.time()})
        if self._out is not None:
            self._out.close()
            self._out = None
