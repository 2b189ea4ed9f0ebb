"""scripts/bootstrap.sh takes the base images' Debian mirror from apt's own sources.

`bootstrap.sh mirrors` prints what the images would be built from; KIT_APT_ETC
points it at a made-up /etc/apt here.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import textwrap

import pytest

BOOTSTRAP = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "bootstrap.sh"
PUBLIC = ("http://deb.debian.org/debian", "http://deb.debian.org/debian-security")


def mirrors(apt_etc, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KIT_DEBIAN_")}
    clean.update(KIT_APT_ETC=str(apt_etc), **env)
    out = subprocess.run(["bash", str(BOOTSTRAP), "mirrors"], env=clean, capture_output=True, text=True, check=True)
    values = dict(line.split("=", 1) for line in out.stdout.splitlines())
    return values["mirror"], values["security"], out.stderr


def write(root, relpath, text):
    path = pathlib.Path(root, relpath)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")


@pytest.fixture()
def apt_etc(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    return tmp_path


def test_deb822_sources(apt_etc):
    # Debian 12's default layout: one .sources file, the archive and the security archive.
    write(apt_etc, "sources.list.d/debian.sources", """\
        Types: deb
        # http://snapshot.debian.org/archive/debian/20250520T000000Z
        URIs: http://mirror.example.internal/debian/
        Suites: bookworm bookworm-updates
        Components: main
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

        Types: deb
        URIs: http://mirror.example.internal/debian-security
        Suites: bookworm-security
        Components: main
        Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
        """)
    main, security, log = mirrors(apt_etc)
    assert (main, security) == ("http://mirror.example.internal/debian", "http://mirror.example.internal/debian-security")
    assert "debian.sources" in log


def test_one_line_sources_list_with_options_and_comments(apt_etc):
    write(apt_etc, "sources.list", """\
        # deb http://commented.example/debian bookworm main
        deb-src http://src-only.example/debian bookworm main
        deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://10.0.0.5:3142/debian bookworm main contrib
        deb http://10.0.0.5:3142/security.debian.org bookworm-security main  # the proxy
        """)
    main, security, log = mirrors(apt_etc)
    assert (main, security) == ("http://10.0.0.5:3142/debian", "http://10.0.0.5:3142/security.debian.org")
    assert "Debian mirror: http://10.0.0.5:3142/debian (from " in log


def test_other_repositories_and_disabled_entries_are_not_debian(apt_etc):
    write(apt_etc, "sources.list.d/a-nodesource.sources", """\
        Types: deb
        URIs: https://deb.nodesource.com/node_20.x
        Suites: nodistro
        Components: main
        """)
    write(apt_etc, "sources.list.d/b-cloud.list", "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n")
    write(apt_etc, "sources.list.d/c-off.sources", """\
        Types: deb
        URIs: http://disabled.example/debian
        Suites: bookworm
        Components: main
        Enabled: no
        """)
    write(apt_etc, "sources.list.d/d-nomain.list", "deb http://contrib-only.example/debian bookworm contrib\n")
    write(apt_etc, "sources.list.d/e-ubuntu.list", "deb http://archive.ubuntu.com/ubuntu jammy main\n")
    write(apt_etc, "sources.list.d/f-cdrom.list", "deb cdrom:[Debian 12]/ bookworm main\n")
    write(apt_etc, "sources.list.d/g-debian.sources", """\
        Types: deb deb-src
        URIs: https://mirror.example.org/debian
        Suites: trixie
        Components: main non-free-firmware
        """)
    main, security, log = mirrors(apt_etc)
    assert main == "https://mirror.example.org/debian"
    assert security == PUBLIC[1]
    assert "public default" in log


def test_sources_list_comes_before_sources_list_d(apt_etc):
    write(apt_etc, "sources.list", "deb http://first.example/debian stable main\n")
    write(apt_etc, "sources.list.d/debian.sources", "Types: deb\nURIs: http://second.example/debian\n"
                                                    "Suites: bookworm\nComponents: main\n")
    assert mirrors(apt_etc)[0] == "http://first.example/debian"


def test_nothing_found_falls_back_to_the_public_archive(apt_etc):
    main, security, log = mirrors(apt_etc)
    assert (main, security) == PUBLIC
    assert log.count("public default") == 2


def test_variables_override_apt(apt_etc):
    write(apt_etc, "sources.list", "deb http://from-apt.example/debian bookworm main\n")
    main, security, log = mirrors(apt_etc, KIT_DEBIAN_MIRROR="http://override.example/debian",
                                  KIT_DEBIAN_SECURITY_MIRROR="http://override.example/security")
    assert (main, security) == ("http://override.example/debian", "http://override.example/security")
    assert "(KIT_DEBIAN_MIRROR)" in log and "(KIT_DEBIAN_SECURITY_MIRROR)" in log


def test_this_machine(tmp_path):
    """On the machine itself the answer is an http(s) URI, whatever apt uses."""
    main, security = mirrors("/etc/apt")[:2]
    assert main.startswith(("http://", "https://")) and security.startswith(("http://", "https://"))
