"""python3 -m claude_daemon: read the environment, serve until SIGTERM/SIGINT.

Exit status 0 after a clean stop, 2 when the configuration is invalid.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from . import __version__, config


class OneLineFormatter(logging.Formatter):
    """One line per event: time (UTC), level, component, message; tracebacks folded in."""

    converter = time.gmtime

    def format(self, record):
        message = record.getMessage()
        if record.exc_info:
            exc = self.formatException(record.exc_info)
            message = f"{message} exc={exc!r}"
        message = message.replace("\r", "\\r").replace("\n", "\\n")
        stamp = self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z"
        return f"{stamp} {record.levelname} {record.name.replace('claude_daemon.', '')} {message}"


def setup_logging(level=logging.INFO):
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(OneLineFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def main(env=None):
    env = os.environ if env is None else env
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass
    setup_logging()
    log = logging.getLogger("claude_daemon")
    try:
        cfg = config.load(env)
    except config.ConfigError as exc:
        log.error("invalid configuration: %s", exc)
        print(f"claude-daemon: invalid configuration: {exc}", file=sys.stderr)
        return 2

    from .api import App  # after the configuration is known to be valid

    log.info("starting claude-daemon version=%s %s", __version__, cfg.summary())
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        app = App(cfg).start()
    except OSError as exc:
        log.error("cannot listen on port %d: %s", cfg.port, exc.strerror or exc)
        return 1
    while not stop.wait(1.0):
        pass
    app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
