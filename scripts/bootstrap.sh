#!/usr/bin/env bash
# Idempotent controller set-up used by both `./kit deploy` and `./kit test`.
#
#   scripts/bootstrap.sh            what a deploy needs
#   scripts/bootstrap.sh --test     that, plus what the tests need (`./kit test`)
#   scripts/bootstrap.sh mirrors    only print the Debian mirrors the base images would use
#
#   1. Debian packages the controller needs (only when missing, only as root on Debian)
#   2. .venv with the pinned Python packages (requirements.txt; --test: requirements-test.txt too)
#   3. the Ansible collections of requirements.yml: Galaxy when it answers,
#      otherwise the `ansible` wheel that bundles the same versions
#   4. the kit itself as the collection claude_kit.stack: the link
#      collections/ansible_collections/claude_kit/stack -> ../../.. (ansible.cfg's collections_path)
#   5. a running Docker engine (Debian's docker.io)
#   6. the lab/test-host base images, built locally with debootstrap from the
#      Debian mirror this machine's apt uses (KIT_DEBIAN_MIRROR and
#      KIT_DEBIAN_SECURITY_MIRROR override it)
#
# Nothing here pulls from a container registry. Re-running it changes nothing
# once everything is in place; each step says what it did.
set -euo pipefail

KIT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${KIT_VENV:-$KIT_ROOT/.venv}
PYTHON=${KIT_PYTHON:-python3}
# Space-separated Debian releases to build base images for.
KIT_BASE_RELEASES=${KIT_BASE_RELEASES:-"bookworm trixie"}
# Where apt's configuration is read from (the tests point it elsewhere).
KIT_APT_ETC=${KIT_APT_ETC:-/etc/apt}
# Used only when neither the variables above nor apt's sources name a Debian mirror.
PUBLIC_DEBIAN_MIRROR=http://deb.debian.org/debian
PUBLIC_DEBIAN_SECURITY_MIRROR=http://deb.debian.org/debian-security
# Bump when the recipe below changes, so that old images are rebuilt.
BASE_IMAGE_RECIPE=3
# deploy (default) or test
PROFILE=deploy

log() { printf '[bootstrap] %s\n' "$*" >&2; }
die() { printf '[bootstrap] ERROR: %s\n' "$*" >&2; exit 1; }

is_root_debian() { [ "$(id -u)" = 0 ] && [ -f /etc/debian_version ]; }

apt_install_missing() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  is_root_debian || die "missing Debian packages: ${missing[*]} (run as root on Debian, or install them yourself)"
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

step_packages() {
  if [ -f /etc/debian_version ]; then
    # What a deploy needs. python3-venv: the venv; debootstrap: base images;
    # docker.io: the engine; postgresql-client: psql for `./kit psql`;
    # curl, ca-certificates: the health checks and HTTPS.
    local pkgs=(debootstrap postgresql-client curl ca-certificates python3-venv)
    docker info >/dev/null 2>&1 || pkgs+=(docker.io)
    if [ "$PROFILE" = test ]; then
      # What only the tests need. postgresql, redis-server: binaries for the
      # throwaway servers of the unit tests, the daemon's tests and the
      # collection test (tests/pgserver.py); sqlite3, pgloader: the migration
      # benchmark's peers; pgbackrest: the backup benchmark's (bench/backup);
      # chromium: the browser test of the dashboard
      # (molecule stack scenario); shellcheck: ansible-test sanity's shellcheck
      # test (skipped with a warning without it); python3-apt, python3-psycopg2:
      # what the role claude_kit.stack.sqlite_migration installs on its host, here
      # localhost in the collection test (tests/collection), so that it finds them.
      pkgs+=(postgresql redis-server sqlite3 pgloader pgbackrest chromium shellcheck python3-apt python3-psycopg2)
    fi
    apt_install_missing "${pkgs[@]}"
  else
    log "not Debian: skipping system packages (need debootstrap, docker, psql yourself)"
  fi
}

# promtool and amtool for the alert rules' tests (tests/prometheus/check.sh):
# Debian's prometheus and prometheus-alertmanager packages, unpacked into
# .cache/prometheus-tools rather than installed, because installing them
# would also start a Prometheus and an Alertmanager on this machine.
PROMETHEUS_TOOLS="$KIT_ROOT/.cache/prometheus-tools"
step_prometheus_tools() {
  [ "$PROFILE" = test ] || return 0
  [ -x "$PROMETHEUS_TOOLS/usr/bin/promtool" ] && [ -x "$PROMETHEUS_TOOLS/usr/bin/amtool" ] && return 0
  [ -f /etc/debian_version ] || { log "not Debian: install promtool and amtool yourself"; return 0; }
  local work pkg
  work=$(mktemp -d)
  log "unpacking promtool and amtool (Debian's prometheus, prometheus-alertmanager) into $PROMETHEUS_TOOLS"
  (cd "$work" && apt-get download -qq prometheus prometheus-alertmanager >/dev/null) ||
    { apt-get update -qq && (cd "$work" && apt-get download -qq prometheus prometheus-alertmanager >/dev/null); } ||
    die "cannot download Debian's prometheus and prometheus-alertmanager packages"
  mkdir -p "$PROMETHEUS_TOOLS"
  for pkg in "$work"/*.deb; do dpkg-deb -x "$pkg" "$PROMETHEUS_TOOLS"; done
  rm -rf "$work"
}

# Installs a requirements file into the venv unless the same content already
# is. The stamp covers the files it includes (-r) too: pass them after it.
venv_requirements() {
  local file=$1 stamp want
  stamp="$VENV/.kit-$(basename "$file").sha256"
  want=$(cat "$@" | sha256sum | cut -d' ' -f1)
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return 0
  log "installing $(basename "$file") into $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$file"
  echo "$want" >"$stamp"
}

step_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating the virtualenv in $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  venv_requirements "$KIT_ROOT/requirements.txt"
  [ "$PROFILE" = test ] && venv_requirements "$KIT_ROOT/requirements-test.txt" "$KIT_ROOT/requirements.txt"
  return 0
}

# Prints the collections of requirements.yml that are not installed at the pinned version.
missing_collections() {
  "$VENV/bin/python" - "$KIT_ROOT/requirements.yml" <<'PY'
import json, subprocess, sys, yaml
want = {c["name"]: str(c["version"]) for c in yaml.safe_load(open(sys.argv[1]))["collections"]}
import os
out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "ansible-galaxy"), "collection", "list", "--format", "json"],
                     capture_output=True, text=True, cwd=sys.argv[1].rsplit("/", 1)[0])
have = {}
if out.returncode == 0 and out.stdout.strip():
    for path, cols in json.loads(out.stdout).items():
        for name, info in cols.items():
            have.setdefault(name, set()).add(info.get("version"))
for name, version in sorted(want.items()):
    if version not in have.get(name, set()):
        print(f"{name}=={version}")
PY
}

step_collections() {
  local missing
  missing=$(cd "$KIT_ROOT" && missing_collections)
  [ -z "$missing" ] && return 0
  log "collections missing: ${missing//$'\n'/ }"
  if (cd "$KIT_ROOT" && timeout 120 "$VENV/bin/ansible-galaxy" collection install --timeout 20 \
        -r requirements.yml -p collections >/dev/null 2>&1); then
    log "collections installed from Galaxy into ./collections"
  else
    log "Galaxy unreachable: installing the ansible wheel that bundles the same versions"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$KIT_ROOT/requirements-collections.txt"
  fi
  missing=$(cd "$KIT_ROOT" && missing_collections)
  [ -z "$missing" ] || die "collections still missing or at another version: ${missing//$'\n'/ }"
}

# The checkout is the collection claude_kit.stack: the playbooks and roles
# name its modules, filters and roles as claude_kit.stack.NAME, found through
# ansible.cfg's collections_path (collections/, git-ignored).
step_collection_link() {
  local parent="$KIT_ROOT/collections/ansible_collections/claude_kit" target=../../..
  local link="$parent/stack"
  if [ -L "$link" ] && [ "$(readlink "$link")" = "$target" ]; then
    return 0
  fi
  if [ -e "$link" ] && [ ! -L "$link" ]; then
    die "$link exists and is not the kit's link (an installed copy of claude_kit.stack?): remove it, then run this again"
  fi
  mkdir -p "$parent"
  ln -sfn "$target" "$link"
  log "linked the checkout as collection claude_kit.stack ($link -> $target)"
}

step_docker() {
  docker info >/dev/null 2>&1 && return 0
  is_root_debian || die "no Docker engine answers. Install and start one (Debian: apt-get install docker.io), or add your user to the docker group"
  apt_install_missing docker.io
  if [ -d /run/systemd/system ]; then
    log "starting docker with systemd"
    systemctl enable --now docker.service >/dev/null
  else
    # No systemd as PID 1 (CI machines, containers): run the engine in the background.
    log "starting dockerd in the background (log: /var/log/kit-dockerd.log)"
    nohup dockerd >/var/log/kit-dockerd.log 2>&1 &
  fi
  local _i
  for _i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  die "dockerd did not come up within 60 s; see /var/log/kit-dockerd.log"
}

# Reads apt's sources (sources.list, sources.list.d/*.list one-line entries and
# sources.list.d/*.sources deb822 stanzas, in apt's order) and prints the first
# Debian archive and the first Debian security archive found, as
#   main URI FILE
#   security URI FILE
# An entry counts when it is enabled, of type deb, has the component main, an
# http(s) URI and a suite of Debian's (a codename or stable/testing/... with an
# optional -updates/-backports suffix; -security for the security archive).
apt_debian_mirrors() {
  "$PYTHON" - "$KIT_APT_ETC" <<'PY'
import glob, os, re, sys

etc = sys.argv[1]
RELEASES = {"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
            "oldoldstable", "oldstable", "stable", "testing", "unstable"}
SUFFIXES = ("", "-updates", "-backports", "-proposed-updates", "-backports-sloppy")


def one_line(text):
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        m = re.match(r"^(deb(?:-src)?)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)\s*(.*)$", line)
        if not m:
            continue
        options = dict(o.split("=", 1) for o in (m.group(2) or "").split() if "=" in o)
        if options.get("enabled", "yes").lower() == "no":
            continue
        yield [m.group(1)], [m.group(3)], [m.group(4)], m.group(5).split()


def deb822(text):
    for stanza in re.split(r"\n\s*\n", text):
        fields, key = {}, None
        for line in stanza.splitlines():
            if line.startswith("#"):
                continue
            if line[:1] in (" ", "\t") and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if not fields or fields.get("enabled", "yes").lower() == "no":
            continue
        yield fields.get("types", "").split(), fields.get("uris", "").split(), \
            fields.get("suites", "").split(), fields.get("components", "").split()


files = [os.path.join(etc, "sources.list")]
files += sorted(glob.glob(os.path.join(etc, "sources.list.d", "*.list"))
                + glob.glob(os.path.join(etc, "sources.list.d", "*.sources")), key=os.path.basename)
found = {}
for path in files:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except OSError:
        continue
    entries = deb822(text) if path.endswith(".sources") else one_line(text)
    for types, uris, suites, components in entries:
        if "deb" not in types or "main" not in components:
            continue
        for suite in suites:
            suite = suite.rstrip("/")
            if suite.endswith("-security") and suite[: -len("-security")] in RELEASES:
                kind = "security"
            elif any(suite == r + s for r in RELEASES for s in SUFFIXES):
                kind = "main"
            else:
                continue
            for uri in uris:
                if re.match(r"^https?://", uri) and kind not in found:
                    found[kind] = (uri.rstrip("/"), path)
for kind in ("main", "security"):
    if kind in found:
        print(kind, *found[kind])
PY
}

# Sets DEBIAN_MIRROR and DEBIAN_SECURITY_MIRROR: the variables, else apt's
# sources, else the public archive; and says which, and why.
resolve_mirrors() {
  local kind uri file found_main="" found_main_file="" found_sec="" found_sec_file=""
  while read -r kind uri file; do
    case "$kind" in
      main) found_main=$uri found_main_file=$file ;;
      security) found_sec=$uri found_sec_file=$file ;;
    esac
  done < <(apt_debian_mirrors || log "could not read apt's sources in $KIT_APT_ETC")
  if [ -n "${KIT_DEBIAN_MIRROR:-}" ]; then
    DEBIAN_MIRROR=$KIT_DEBIAN_MIRROR
    log "Debian mirror: $DEBIAN_MIRROR (KIT_DEBIAN_MIRROR)"
  elif [ -n "$found_main" ]; then
    DEBIAN_MIRROR=$found_main
    log "Debian mirror: $DEBIAN_MIRROR (from $found_main_file)"
  else
    DEBIAN_MIRROR=$PUBLIC_DEBIAN_MIRROR
    log "Debian mirror: $DEBIAN_MIRROR (public default: none in $KIT_APT_ETC's sources)"
  fi
  if [ -n "${KIT_DEBIAN_SECURITY_MIRROR:-}" ]; then
    DEBIAN_SECURITY_MIRROR=$KIT_DEBIAN_SECURITY_MIRROR
    log "Debian security mirror: $DEBIAN_SECURITY_MIRROR (KIT_DEBIAN_SECURITY_MIRROR)"
  elif [ -n "$found_sec" ]; then
    DEBIAN_SECURITY_MIRROR=$found_sec
    log "Debian security mirror: $DEBIAN_SECURITY_MIRROR (from $found_sec_file)"
  else
    DEBIAN_SECURITY_MIRROR=$PUBLIC_DEBIAN_SECURITY_MIRROR
    log "Debian security mirror: $DEBIAN_SECURITY_MIRROR (public default: none in $KIT_APT_ETC's sources)"
  fi
}

image_name() {
  case "$1" in
    bookworm) echo "claude-kit-base:debian12" ;;
    trixie) echo "claude-kit-base:debian13" ;;
    *) echo "claude-kit-base:$1" ;;
  esac
}

image_is_current() {
  [ "$(docker image inspect -f '{{ index .Config.Labels "org.claude-kit.recipe" }}' "$(image_name "$1")" 2>/dev/null)" = "$BASE_IMAGE_RECIPE" ]
}

build_base_image() (
  # A subshell, so that the trap removes this build's rootfs whatever happens.
  local release=$1 image dir
  image=$(image_name "$release")
  is_root_debian || die "building $image needs root (debootstrap)"
  dir=$(mktemp -d "/var/tmp/kit-rootfs-$release.XXXXXX")
  trap 'rm -rf "$dir" "$dir.log"' EXIT
  log "building $image with debootstrap ($release) from $DEBIAN_MIRROR; this takes about a minute"
  debootstrap --variant=minbase \
    --include=python3,systemd,systemd-sysv,sudo,procps,iproute2,ca-certificates,gnupg \
    "$release" "$dir" "$DEBIAN_MIRROR" >"$dir.log" 2>&1 || { tail -n 20 "$dir.log" >&2; die "debootstrap $release failed"; }
  cat >"$dir/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR $release main
deb $DEBIAN_MIRROR $release-updates main
deb $DEBIAN_SECURITY_MIRROR $release-security main
EOF
  # Test hosts only: keep package installs lean and fast. The roles name every
  # package they need, so nothing may rely on recommends being pulled in.
  printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$dir/etc/apt/apt.conf.d/90kit-lean"
  # Each container gets its own machine-id at boot; no console gettys in a container.
  : >"$dir/etc/machine-id"
  ln -sf /dev/null "$dir/etc/systemd/system/getty@tty1.service"
  ln -sf /dev/null "$dir/etc/systemd/system/console-getty.service"
  rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
  tar -C "$dir" -c . | docker import \
    --change 'CMD ["/lib/systemd/systemd"]' \
    --change 'ENV container=docker' \
    --change "LABEL org.claude-kit.recipe=$BASE_IMAGE_RECIPE" \
    - "$image" >/dev/null
  log "built $image"
)

step_images() {
  local release pids=() rc=0 todo=()
  for release in $KIT_BASE_RELEASES; do
    image_is_current "$release" || todo+=("$release")
  done
  [ ${#todo[@]} -eq 0 ] && return 0
  resolve_mirrors
  # All releases in parallel: debootstrap is mostly waiting on the network.
  for release in "${todo[@]}"; do
    build_base_image "$release" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  [ $rc -eq 0 ] || die "base image build failed"
}

main() {
  while [ $# -gt 0 ]; do
    case "$1" in
      --test) PROFILE="test" ;;
      mirrors)
        # Print the mirrors the base images would be built from (and why, on stderr).
        resolve_mirrors
        printf 'mirror=%s\nsecurity=%s\n' "$DEBIAN_MIRROR" "$DEBIAN_SECURITY_MIRROR"
        return 0
        ;;
      *) die "unknown argument: $1 (usage: bootstrap.sh [--test] | bootstrap.sh mirrors)" ;;
    esac
    shift
  done
  step_packages
  step_prometheus_tools
  step_venv
  step_collections
  step_collection_link
  step_docker
  step_images
  log "ready ($PROFILE): venv $VENV, $(docker version -f 'docker engine {{.Server.Version}}' 2>/dev/null)"
}

main "$@"
