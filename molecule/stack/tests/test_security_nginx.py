"""Nginx's hardening, as a client and an operator see it: HTTPS only, TLS 1.2 and 1.3 with
strong suites, the security headers on every answer, no version, no default site, the
workers unprivileged, the configuration private, and the per-address limits in force.

Every request goes from the controller to the web host's address; the certificate is
verified against the CA the tls role installed (test_stack.tls_context). Each test that
trips a limit waits until the service answers normally again before it ends.
"""

import http.client
import re
import socket
import ssl
import time

import pytest
import testinfra.utils.ansible_runner

from test_stack import DATA, INVENTORY, tls_context, web_address

testinfra_hosts = ["stack-data"]
VARS = testinfra.utils.ansible_runner.AnsibleRunner(INVENTORY).get_variables("stack-data")
HTTPS_PORT = int(VARS.get("nginx_https_port", 443))
HTTP_PORT = int(VARS.get("nginx_http_port", 80))
CSP = VARS.get("nginx_content_security_policy",
               "default-src 'self'; object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'")
HSTS = f"max-age={VARS.get('nginx_hsts_max_age', 31536000)}"
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": VARS.get("nginx_referrer_policy", "no-referrer"),
}
NGINX_CONF = "/etc/nginx/nginx.conf"


def request(method, path, host_header=None, https=True, body=None, context=None):
    """One request on a fresh connection: (status, message with every header, body)."""
    if https:
        conn = http.client.HTTPSConnection(web_address(), HTTPS_PORT, timeout=10, context=context or tls_context())
    else:
        conn = http.client.HTTPConnection(web_address(), HTTP_PORT, timeout=10)
    try:
        headers = {"Host": host_header} if host_header else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.msg, resp.read()
    finally:
        conn.close()


def handshake(version, ciphers=None):
    """A TLS handshake at exactly `version`: (protocol, cipher), or the SSL error's reason."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=DATA.file(VARS.get("kit_tls_ca_file", "/etc/claude-kit/tls/ca.crt")).content_string)
    context.minimum_version = context.maximum_version = version
    # SECLEVEL=0 lets this client offer what the server must refuse: the refusal is then
    # the server's (its protocol_version or handshake_failure alert), not the client's.
    context.set_ciphers(ciphers or "DEFAULT:@SECLEVEL=0")
    try:
        with socket.create_connection((web_address(), HTTPS_PORT), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=web_address()) as tls:
                return tls.version(), tls.cipher()[0]
    except ssl.SSLError as err:
        return None, err.reason


def error_log_count(text):
    # grep -c prints the count either way and exits 1 when it is 0; 2 (no log, unreadable) is an error.
    result = DATA.run("grep -cF %s /var/log/nginx/error.log", text)
    assert result.rc in (0, 1), result.stderr
    return int(result.stdout.strip())


def wait_until_answering(timeout=20):
    """Until /health answers 200 again, then as long as the rate limit's burst takes to refill."""
    deadline = time.time() + timeout
    while request("GET", "/health")[0] != 200:
        assert time.time() < deadline, "Nginx kept refusing /health"
        time.sleep(0.5)
    time.sleep(2.5)


def assert_security_headers(msg, https=True):
    for name, value in COMMON_HEADERS.items():
        assert msg.get_all(name) == [value], (name, msg.get_all(name))
    # One policy, Nginx's or (the dashboard) the daemon's own, never both.
    policies = msg.get_all("Content-Security-Policy") or []
    assert len(policies) == 1, policies
    assert "frame-ancestors 'none'" in policies[0] and "unsafe-" not in policies[0], policies[0]
    assert msg.get_all("Strict-Transport-Security") == ([HSTS] if https else None)


def test_plain_http_only_redirects_to_https(host):
    for path in ("/", "/health", "/api/alerts?level=info"):
        status, msg, body = request("GET", path, https=False)
        assert status == 301, (path, status)
        assert msg["Location"] == f"https://{web_address()}{path}"
        assert b"status" not in body  # nothing of the daemon's
        # The security headers, but no HSTS: browsers ignore it over plain HTTP.
        assert_security_headers(msg, https=False)
    status, _msg, _body = request("POST", "/api/alerts", https=False, body='{"level": "info", "title": "plain"}')
    assert status == 301


def test_tls_1_2_and_1_3_accepted_with_the_kit_certificate(host):
    assert handshake(ssl.TLSVersion.TLSv1_3)[0] == "TLSv1.3"
    version, cipher = handshake(ssl.TLSVersion.TLSv1_2)
    assert version == "TLSv1.2"
    assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher), cipher
    # Nginx serves exactly the certificate the tls role installed.
    with socket.create_connection((web_address(), HTTPS_PORT), timeout=10) as raw:
        with tls_context().wrap_socket(raw, server_hostname=web_address()) as tls:
            served = tls.getpeercert(binary_form=True)
    on_disk = DATA.file(VARS.get("kit_tls_cert_file", "/etc/claude-kit/tls/server.crt")).content_string
    assert served == ssl.PEM_cert_to_DER_cert(on_disk[:on_disk.index("-----END CERTIFICATE-----") + 25])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_tls_1_1_and_older_refused_by_the_server(host):
    for version in (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1):
        assert handshake(version) == (None, "TLSV1_ALERT_PROTOCOL_VERSION"), version


def test_tls_1_2_without_forward_secrecy_or_aead_refused(host):
    # CBC suites with ECDHE, and a GCM suite without ECDHE (static RSA key exchange).
    weak = "ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:AES128-GCM-SHA256"
    assert handshake(ssl.TLSVersion.TLSv1_2, weak + ":@SECLEVEL=0") == (None, "SSLV3_ALERT_HANDSHAKE_FAILURE")


def test_no_version_in_the_server_header_or_error_pages(host):
    for path, expected in (("/health", 200), ("/metrics", 404)):
        status, msg, body = request("GET", path)
        assert status == expected
        assert msg.get_all("Server") == ["nginx"]
    assert re.search(rb"<center>nginx</center>", body), body  # the 404 page: no version after the name
    assert request("GET", "/", https=False)[1].get_all("Server") == ["nginx"]


def test_security_headers_on_200_and_404(host):
    status, msg, _body = request("GET", "/health")
    assert status == 200
    assert_security_headers(msg)
    assert msg["Content-Security-Policy"] == CSP
    status, msg, _body = request("GET", "/metrics")  # Nginx's own 404
    assert status == 404
    assert_security_headers(msg)
    assert msg["Content-Security-Policy"] == CSP
    status, msg, _body = request("GET", "/api/no-such-thing")  # the daemon's 404, through Nginx
    assert status == 404
    assert_security_headers(msg)


def test_the_dashboard_keeps_its_own_stricter_policy(host):
    status, msg, body = request("GET", "/")
    assert status == 200 and b'id="usage-chart"' in body
    assert_security_headers(msg)
    # The daemon's hash-based policy: nothing but its own inline script and style runs.
    policy = msg["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'sha256-" in policy, policy


def test_security_headers_on_429_from_the_rate_limit(host):
    refused = None
    connection = http.client.HTTPSConnection(web_address(), HTTPS_PORT, timeout=10, context=tls_context())
    try:
        # One keep-alive connection, far faster than the rate: bounded at 200 requests.
        for _ in range(200):
            connection.request("GET", "/health")
            resp = connection.getresponse()
            resp.read()
            if resp.status == 429:
                refused = resp.msg
                break
    finally:
        connection.close()
    try:
        assert refused is not None, "200 requests in a row were never limited"
        assert refused.get_all("Server") == ["nginx"]
        assert_security_headers(refused)
        assert refused["Content-Security-Policy"] == CSP
    finally:
        wait_until_answering()


def test_connections_beyond_the_per_address_limit_get_429(host):
    limit = int(VARS.get("nginx_limit_conn", 20))
    before = error_log_count("limiting connections by zone")
    held = []
    try:
        # `limit` requests in progress: each POST has sent its headers and promises a body it
        # never sends (Nginx waits client_body_timeout for it). Ten a second, under the rate
        # limit, so that only the connection limit can refuse the next one.
        for _ in range(limit):
            raw = socket.create_connection((web_address(), HTTPS_PORT), timeout=10)
            tls = tls_context().wrap_socket(raw, server_hostname=web_address())
            held.append(tls)
            tls.sendall(f"POST /api/alerts HTTP/1.1\r\nHost: {web_address()}\r\nContent-Type: application/json\r\n"
                        "Content-Length: 64\r\n\r\n".encode())
            time.sleep(0.1)
        time.sleep(0.3)
        status, msg, _body = request("GET", "/health")
        assert status == 429
        assert_security_headers(msg)
    finally:
        for tls in held:
            tls.close()
    assert error_log_count("limiting connections by zone") > before
    wait_until_answering()
    assert request("GET", "/health")[0] == 200


def test_a_raised_client_is_not_held_to_the_sites_rate_while_everyone_else_is(host):
    """nginx_rate_limit_raised_clients (the scenario raises 127.0.0.1/32, a benchmark's client):
    300 requests in a row over one connection from the web host's loopback (verified: the
    certificate carries 127.0.0.1) all get 200, where the test above saw 429 within 200 from
    the host's address."""
    raised = VARS.get("nginx_rate_limit_raised_clients", [])
    assert raised == ["127.0.0.1/32"], raised
    script = ("import http.client, ssl, sys, collections\n"
              "ctx = ssl.create_default_context(cafile=sys.argv[1])\n"
              "conn = http.client.HTTPSConnection('127.0.0.1', int(sys.argv[3]), timeout=10, context=ctx)\n"
              "seen = collections.Counter()\n"
              "for _ in range(300):\n"
              "    conn.request('GET', '/health', headers={'Host': sys.argv[2]})\n"
              "    r = conn.getresponse(); r.read(); seen[r.status] += 1\n"
              "print(dict(seen))\n")
    out = DATA.check_output("python3 -c %s %s %s %s", script, VARS.get("kit_tls_ca_file", "/etc/claude-kit/tls/ca.crt"),
                            web_address(), str(HTTPS_PORT))
    assert out.strip() == "{200: 300}", out
    wait_until_answering()


def test_a_reload_nginx_refuses_is_reported_and_the_old_configuration_goes_on_serving(host):
    """systemctl reload returns 0 even when Nginx refuses the new configuration and keeps the old
    one. Here the site's rate-limit zone gets another key than the running one's (what the kit's
    own template did when nginx_rate_limit_raised_clients was set or emptied), which `nginx -t`
    accepts and the running master refuses: the kit's reload program (every reload of
    the roles, the drain and rotate-certs.yml) says so and exits 1, the site still answers, and
    with the file put back a reload is taken (new workers)."""
    program, conf, kept = "/usr/local/sbin/claude-kit-nginx-reload", "/etc/nginx/nginx.conf", "/root/nginx.conf.kept"
    DATA.check_output(f"cp -p {conf} {kept}")
    try:
        DATA.check_output(f"sed -i 's/limit_req_zone [$]claude_limit_key zone=claude_api:/"
                          f"limit_req_zone $binary_remote_addr zone=claude_api:/' {conf}")
        assert "limit_req_zone $binary_remote_addr zone=claude_api:" in DATA.check_output(f"cat {conf}")
        assert DATA.run("nginx -t -q").rc == 0  # nginx -t alone cannot tell
        refused = DATA.run(f"{program} --timeout 15")
        assert refused.rc == 1, (refused.stdout, refused.stderr)
        assert refused.stderr.startswith("refused:") and "claude_api" in refused.stderr, refused.stderr
        assert request("GET", "/health")[0] == 200
    finally:
        DATA.check_output(f"cp -p {kept} {conf} && rm -f {kept}")
    taken = DATA.run(program)
    assert taken.rc == 0 and taken.stdout.strip() == "reloaded", (taken.stdout, taken.stderr)
    wait_until_answering()


def test_timeouts_and_limits_are_in_the_running_configuration(host):
    config = DATA.check_output("nginx -T 2>/dev/null")
    for directive, default in (("client_header_timeout", "10s"), ("client_body_timeout", "10s"),
                               ("send_timeout", "10s"), ("keepalive_timeout", "15s"),
                               ("client_max_body_size", "1m")):
        assert re.search(rf"^\s*{directive} {VARS.get('nginx_' + directive, default)};", config, re.M), directive
    # Per address for every client; the map's key is the address itself for all but the raised ones.
    assert re.search(r"^\s*limit_conn_zone \$claude_limit_key zone=claude_conn:\S+;", config, re.M)
    assert re.search(r"^\s*limit_req_zone \$claude_limit_key zone=claude_api:\S+ rate=%s;"
                     % re.escape(VARS.get("nginx_rate_limit", "20r/s")), config, re.M)
    assert re.search(r"map \$claude_raised_client \$claude_limit_key \{\s*1 \"\";\s*default \$binary_remote_addr;",
                     config)
    assert re.search(r"geo \$claude_raised_client \{\s*default 0;\s*127\.0\.0\.1/32 1;\s*\}", config)
    assert re.search(rf"^\s*limit_conn \S+ {VARS.get('nginx_limit_conn', 20)};", config, re.M)
    assert re.search(r"^\s*server_tokens off;", config, re.M)
    assert re.search(r"^\s*ssl_session_tickets off;", config, re.M)


@pytest.mark.parametrize("https", [True, False], ids=["https", "http"])
def test_an_unknown_host_name_gets_no_answer(host, https):
    # Nginx closes the connection (444): no page of the daemon's, no redirect to an
    # attacker's name, and the dashboard is out of reach of DNS rebinding.
    context = ssl.create_default_context(cadata=DATA.file(
        VARS.get("kit_tls_ca_file", "/etc/claude-kit/tls/ca.crt")).content_string)
    context.check_hostname = False  # the certificate is not for that name; the point is the Host
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, ssl.SSLError)):
        request("GET", "/health", host_header="dashboard.attacker.example", https=https, context=context)
    assert request("GET", "/health", https=https)[0] == (200 if https else 301)


def test_no_default_site(host):
    assert not DATA.file("/etc/nginx/sites-enabled/default").exists
    config = DATA.check_output("nginx -T 2>/dev/null")
    # The kit's nginx.conf is the whole configuration: it includes no site directory of Debian's,
    # and its own include directory holds only the monitoring role's HTTPS front of nginx_exporter.
    assert not re.search(r"^\s*include\s+/etc/nginx/(sites-enabled|conf\.d)/", config, re.M)
    include_dir = VARS.get("kit_nginx_include_dir", "/etc/nginx/claude-kit.d")
    assert DATA.check_output("ls -A %s", include_dir).split() == ["claude-kit-nginx-exporter.conf"]


def test_workers_run_as_www_data_and_only_the_master_as_root(host):
    processes = DATA.process.filter(comm="nginx")
    masters = [p for p in processes if p.args.startswith("nginx: master process")]
    workers = [p for p in processes if p.args.startswith("nginx: worker process")]
    assert len(masters) == 1 and masters[0].user == "root"
    assert workers and {p.user for p in workers} == {"www-data"}, [(p.user, p.args) for p in processes]


def test_nginx_conf_belongs_to_root_and_is_not_world_readable(host):
    conf = DATA.file(NGINX_CONF)
    assert (conf.user, conf.group, conf.mode) == ("root", "root", 0o640)
    # What that means: the workers' user cannot read the site's layout.
    assert DATA.run("runuser -u www-data -- cat %s", NGINX_CONF).rc != 0
