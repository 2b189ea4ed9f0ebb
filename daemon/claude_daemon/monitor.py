"""The usage monitor: one usage_data row per USAGE_INTERVAL with the daemon's
real traffic in that interval.

The guide's UsageMonitorV2 adds Math.random() to tokens and requests before
storing them. Not here: usage_data feeds the dashboard, predictions and
alerts, and invented numbers would make all of them lie; an idle interval is
recorded as zeros because zero is what happened.

What a row means (documented in daemon/README.md too):
  timestamp          end of the interval (UTC)
  requests_count     HTTP requests answered in the interval, except GET /health
                     (probes from Docker, Nginx and Ansible are not usage)
  avg_response_time  their mean time from request line read to response
                     written, in whole milliseconds (0 when there were none)
  error_count        those answered with a status >= 400 (client and server errors)
  active_users       distinct session ids among them: the X-Session-Id header,
                     else the claude_session cookie; requests with neither
                     are counted in requests but not here (at most 100000 per interval)
  endpoint           the most requested route (templated, e.g.
                     /api/alerts/{id}/acknowledge), NULL when there were none
  tokens_used        sum of the X-Tokens-Used headers requests reported (else 0)
  cost_usd           sum of the X-Cost-Usd headers requests reported (else 0)
  session_id, user_id  NULL: a row aggregates everyone
"""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import logging
import threading

from .errors import StoreUnavailable

log = logging.getLogger("claude_daemon.monitor")

MAX_PENDING = 1440  # rows kept for retry while no store works (a day at 60 s)
MAX_SESSIONS = 100_000  # distinct session ids remembered per interval (bounds memory)


def utcnow():
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class UsageMonitor:
    def __init__(self, db, interval, clock=utcnow):
        self.db = db
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._pending = collections.deque(maxlen=MAX_PENDING)
        self._stop = threading.Event()
        self._thread = None
        self._reset_locked()

    def _reset_locked(self):
        self._requests = 0
        self._errors = 0
        self._total_ms = 0.0
        self._sessions = set()
        self._routes = collections.Counter()
        self._tokens = 0
        self._cost = decimal.Decimal(0)

    def record(self, route, status, duration_ms, session_id=None, tokens=0, cost=None):
        with self._lock:
            self._requests += 1
            self._total_ms += duration_ms
            if status >= 400:
                self._errors += 1
            if session_id and len(self._sessions) < MAX_SESSIONS:
                self._sessions.add(session_id)
            if route:
                self._routes[route] += 1
            self._tokens += tokens
            if cost:
                self._cost += cost

    def snapshot(self):
        """The row for the interval that ends now; starts the next interval."""
        with self._lock:
            requests = self._requests
            row = {
                "timestamp": self._clock(),
                "requests_count": requests,
                "avg_response_time": int(round(self._total_ms / requests)) if requests else 0,
                "error_count": self._errors,
                "active_users": len(self._sessions),
                # Ties go to the route seen first in the interval.
                "endpoint": self._routes.most_common(1)[0][0] if self._routes else None,
                "tokens_used": min(self._tokens, 2**31 - 1),
                "cost_usd": min(self._cost, decimal.Decimal("999999.9999")),
            }
            self._reset_locked()
        return row

    def flush(self):
        """Store the current interval's row (and any earlier one that could not be stored)."""
        self._pending.append(self.snapshot())
        while self._pending:
            row = self._pending[0]
            try:
                self.db.insert("usage_data", row)
            except StoreUnavailable as exc:
                log.error("usage row not stored yet (%s); %d waiting", exc, len(self._pending))
                return False
            self._pending.popleft()
            log.info("usage recorded requests=%d errors=%d avg_ms=%d active_users=%d endpoint=%s",
                     row["requests_count"], row["error_count"], row["avg_response_time"],
                     row["active_users"], row["endpoint"] or "-")
        return True

    def start(self):
        def loop():
            while not self._stop.wait(self.interval):
                try:
                    self.flush()
                except Exception:  # keep monitoring whatever happens
                    log.exception("usage monitor flush failed")

        self._thread = threading.Thread(target=loop, name="usage-monitor", daemon=True)
        self._thread.start()

    def stop(self, flush=True):
        """Stop the timer and store the partial interval (on SIGTERM)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if flush:
            try:
                self.flush()
            except Exception:  # shutdown goes on; the failure is logged
                log.exception("final usage flush failed")
