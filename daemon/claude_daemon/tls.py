"""HTTPS for the API: a server SSLContext that follows its files on disk.

The certificate and key (DAEMON_TLS_CERT, DAEMON_TLS_KEY) are renewed by
replacing the files, so the context is rebuilt whenever either file's inode,
size or modification time changed: checked with two stat() calls per new
connection, so a renewal is served without a restart. A pair that does not
load (the certificate replaced, its key not yet) keeps the previous context
and is tried again once either file changes again (not at every connection:
loading is far dearer than a stat).
"""

from __future__ import annotations

import logging
import os
import ssl
import threading

log = logging.getLogger("claude_daemon.tls")

# TLS 1.2 suites: forward secret (ECDHE) with authenticated encryption only, as
# the kit's Nginx; TLS 1.3's suites are all of that kind already.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(cert_file, key_file):
    """A TLS 1.2+ server context for the pair; raises OSError or ssl.SSLError."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_TICKET | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(cert_file, key_file)
    return context


def check_pair(cert_file, key_file):
    """None when the pair loads, else why not (for the configuration's message)."""
    try:
        server_context(cert_file, key_file)
    except ssl.SSLError as exc:
        return f"the certificate and key do not load together ({exc.reason or exc})"
    except OSError as exc:
        return f"cannot read {exc.filename or cert_file}: {exc.strerror or exc}"
    return None


class ReloadingContext:
    """The current SSLContext for (cert_file, key_file), rebuilt when they change."""

    def __init__(self, cert_file, key_file):
        self.cert_file = cert_file
        self.key_file = key_file
        self._lock = threading.Lock()
        self._stamp = self._files_stamp()
        self._failed = None  # the stamp of files that did not load
        self._context = server_context(cert_file, key_file)  # a bad pair at start raises

    def _files_stamp(self):
        stamps = []
        for path in (self.cert_file, self.key_file):
            st = os.stat(path)
            stamps.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamps)

    def current(self):
        """The context to wrap a new connection with (the newest pair that loads)."""
        try:
            stamp = self._files_stamp()
        except OSError as exc:  # between the removal and the rename of a renewal
            log.warning("TLS files unreadable, serving the loaded certificate: %s", exc)
            return self._context
        if stamp in (self._stamp, self._failed):
            return self._context
        with self._lock:
            if stamp not in (self._stamp, self._failed):
                try:
                    context = server_context(self.cert_file, self.key_file)
                except (OSError, ssl.SSLError) as exc:
                    self._failed = stamp
                    log.warning("new TLS files do not load yet, serving the loaded certificate: %s", exc)
                    return self._context
                self._context, self._stamp = context, stamp
                log.info("TLS certificate reloaded from %s", self.cert_file)
        return self._context
