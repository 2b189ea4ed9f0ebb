#!/usr/bin/env bash
# Idempotent controller set-up used by both `./kit deploy` and `./kit test`.
#
#   1. Debian packages the controller needs (only when missing, only as root on Debian)
#   2. .venv with the pinned Python packages (requirements.txt)
#   3. the Ansible collections of requirements.yml: Galaxy when it answers,
#      otherwise the `ansible` wheel that bundles the same versions
#   4. a running Docker engine (Debian's docker.io)
#   5. the lab/test-host base images, built locally with debootstrap
#
# Nothing here pulls from a container registry. Re-running it changes nothing
# once everything is in place; each step says what it did.
set -euo pipefail

KIT_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${KIT_VENV:-$KIT_ROOT/.venv}
PYTHON=${KIT_PYTHON:-python3}
# Space-separated Debian releases to build base images for.
KIT_BASE_RELEASES=${KIT_BASE_RELEASES:-"bookworm trixie"}
DEBIAN_MIRROR=${KIT_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# Bump when the recipe below changes, so that old images are rebuilt.
BASE_IMAGE_RECIPE=3

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
    # python3-venv: the venv; debootstrap: base images; docker.io: the engine;
    # postgresql-client: psql for README's lab example and the tests' diagnostics;
    # postgresql, redis-server: binaries for the throwaway servers of the unit
    # tests (tests/pgserver.py); sqlite3, pgloader: the migration benchmark's peers.
    # chromium: the browser test of the dashboard (molecule stack scenario).
    local pkgs=(debootstrap postgresql postgresql-client redis-server sqlite3 pgloader chromium curl ca-certificates)
    "$PYTHON" -m venv --help >/dev/null 2>&1 || pkgs+=(python3-venv)
    docker info >/dev/null 2>&1 || pkgs+=(docker.io)
    apt_install_missing "${pkgs[@]}"
  else
    log "not Debian: skipping system packages (need debootstrap, docker, psql yourself)"
  fi
}

step_venv() {
  local stamp="$VENV/.kit-requirements.sha256" want
  want=$(cat "$KIT_ROOT/requirements.txt" | sha256sum | cut -d' ' -f1)
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  log "creating/updating the virtualenv in $VENV"
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r "$KIT_ROOT/requirements.txt"
  echo "$want" >"$stamp"
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
  log "collections missing: $(echo $missing)"
  if (cd "$KIT_ROOT" && timeout 120 "$VENV/bin/ansible-galaxy" collection install --timeout 20 \
        -r requirements.yml -p collections >/dev/null 2>&1); then
    log "collections installed from Galaxy into ./collections"
  else
    log "Galaxy unreachable: installing the ansible wheel that bundles the same versions"
    "$VENV/bin/pip" install -q --disable-pip-version-check -r "$KIT_ROOT/requirements-collections.txt"
  fi
  missing=$(cd "$KIT_ROOT" && missing_collections)
  [ -z "$missing" ] || die "collections still missing or at another version: $(echo $missing)"
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
  local i
  for i in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  die "dockerd did not come up within 60 s; see /var/log/kit-dockerd.log"
}

image_name() {
  case "$1" in
    bookworm) echo "claude-kit-base:debian12" ;;
    trixie) echo "claude-kit-base:debian13" ;;
    *) echo "claude-kit-base:$1" ;;
  esac
}

build_base_image() (
  # A subshell, so that the trap removes this build's rootfs whatever happens.
  local release=$1 image dir
  image=$(image_name "$release")
  if [ "$(docker image inspect -f '{{ index .Config.Labels "org.claude-kit.recipe" }}' "$image" 2>/dev/null)" = "$BASE_IMAGE_RECIPE" ]; then
    return 0
  fi
  is_root_debian || die "building $image needs root (debootstrap)"
  dir=$(mktemp -d "/var/tmp/kit-rootfs-$release.XXXXXX")
  trap 'rm -rf "$dir" "$dir.log"' EXIT
  log "building $image with debootstrap ($release); this takes about a minute"
  debootstrap --variant=minbase \
    --include=python3,systemd,systemd-sysv,sudo,procps,iproute2,ca-certificates,gnupg \
    "$release" "$dir" "$DEBIAN_MIRROR" >"$dir.log" 2>&1 || { tail -n 20 "$dir.log" >&2; die "debootstrap $release failed"; }
  cat >"$dir/etc/apt/sources.list" <<EOF
deb $DEBIAN_MIRROR $release main
deb $DEBIAN_MIRROR $release-updates main
deb http://deb.debian.org/debian-security $release-security main
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
  local release pids=() rc=0
  # Both releases in parallel: debootstrap is mostly waiting on the network.
  for release in $KIT_BASE_RELEASES; do
    build_base_image "$release" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  [ $rc -eq 0 ] || die "base image build failed"
}

main() {
  step_packages
  step_venv
  step_collections
  step_docker
  step_images
  log "ready: venv $VENV, $(docker version -f 'docker engine {{.Server.Version}}' 2>/dev/null)"
}

main "$@"
