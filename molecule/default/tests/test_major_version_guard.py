"""A run that targets another PostgreSQL major version than the one holding the data
(a changed postgresql_version, or a Debian release upgrade) is refused before any
change: it would set up an empty cluster beside the data (issue 12, upgrades)."""

import testinfra

from helpers import INVENTORY, run_playbook

# Each host holds its Debian release's version: 15 on Debian 12, 17 on Debian 13.
HOLDS = {"molecule-pg-debian12": "15", "molecule-pg-debian13": "17"}


def test_another_major_version_beside_the_data_is_refused_before_any_change():
    rc, output, recap = run_playbook("-e", "postgresql_version=16")
    assert rc != 0, output[-3000:]
    flat = " ".join(output.split())  # the message as one line, whatever the callback's line wrapping
    for name, version in HOLDS.items():
        assert (f"{name} holds PostgreSQL {version} data (/var/lib/postgresql/{version}/main), and this run "
                "targets PostgreSQL 16") in flat, output[-3000:]
        assert "docs/runbooks/upgrade.md" in flat
        host = testinfra.get_host(f"ansible://{name}?ansible_inventory={INVENTORY}")
        # Nothing of 16 was installed or created, and the server still runs its own version.
        assert not host.file("/var/lib/postgresql/16").exists and not host.file("/etc/postgresql/16").exists
        assert not host.package("postgresql-16").is_installed
        assert host.service(f"postgresql@{version}-main").is_running
    assert recap and all(r["changed"] == 0 for r in recap.values()), recap
