"""python3 -m claude_daemon.healthcheck: the image's HEALTHCHECK.

GET /health on the daemon's own port, over HTTPS when DAEMON_TLS_CERT is set
(verified against DAEMON_TLS_CA, else the system's trust store: the
certificate must name 127.0.0.1), plain HTTP otherwise. Never through an
HTTP(S)_PROXY the container may have been given. Exit 0 on a 200, else 1.
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request


def url(env):
    scheme = "https" if env.get("DAEMON_TLS_CERT", "").strip() else "http"
    return f"{scheme}://127.0.0.1:{env.get('PORT', '').strip() or '5000'}/health"


def main(env=None, timeout=4.0):
    env = os.environ if env is None else env
    context = ssl.create_default_context(cafile=env.get("DAEMON_TLS_CA", "").strip() or None)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(url(env), timeout=timeout) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"healthcheck: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
