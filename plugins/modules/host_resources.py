#!/usr/bin/python
# -*- coding: utf-8 -*-
"""Module host_resources: the memory and CPUs a host can really use."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: host_resources
short_description: Memory and CPUs a host can really use, container limits included
description:
  - Returns the memory (MiB) and the number of CPUs that processes on the host can use.
  - Inside a container Ansible's facts report the whole machine; this module also reads the
    cgroup (v1 or v2) limits on the way from the process's own cgroup up to the root, and
    the CPU affinity, and returns the smallest of each.
  - Read-only; never reports a change. Supports check mode.
  - Used by the postgresql role to feed the C(pg_tune) filter.
version_added: "1.0.0"
author:
  - claude-kit maintainers (@claude-kit)
options: {}
attributes:
  check_mode:
    support: full
    description: Reads only, in check mode as well.
  diff_mode:
    support: none
    description: Nothing to compare.
notes:
  - Linux only (reads /proc and /sys/fs/cgroup).
"""

EXAMPLES = r"""
- name: Read the usable memory and CPUs
  claude_kit.stack.host_resources:
  register: resources

- name: Show them
  ansible.builtin.debug:
    msg: "{{ resources.memory_mb }} MiB, {{ resources.cpus }} CPUs ({{ resources.memory_source }})"
"""

RETURN = r"""
memory_mb:
  description: Usable memory in MiB, the smallest of MemTotal and any cgroup limit.
  returned: always
  type: int
  sample: 1024
memory_source:
  description: Where memory_mb comes from, C(meminfo) or C(cgroup).
  returned: always
  type: str
  sample: cgroup
cpus:
  description: Usable CPUs, the smallest of the affinity mask and any cgroup quota (rounded up).
  returned: always
  type: int
  sample: 2
cpus_source:
  description: Where cpus comes from, C(affinity) or C(cgroup).
  returned: always
  type: str
  sample: affinity
machine_memory_mb:
  description: MemTotal from /proc/meminfo, what the facts report.
  returned: always
  type: int
  sample: 24036
"""

# Imports follow the documentation, as Ansible wants them (ansible-test validate-modules).
import math
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.claude_kit.stack.plugins.module_utils.kit_module import KitModuleError, cpu_count, end_module

# cgroup v1 reports "no limit" as a huge page-aligned number.
UNLIMITED_V1 = 1 << 62


def parse_meminfo_mb(text):
    """MemTotal of /proc/meminfo in MiB."""
    for line in text.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            if len(parts) >= 2 and parts[1].isdigit():
                return int(parts[1]) // 1024
    raise ValueError("MemTotal not found in /proc/meminfo")


def parse_proc_cgroup(text):
    """/proc/self/cgroup -> {controller: path}; the v2 unified entry is under key ''."""
    paths = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _hier, controllers, path = parts
        for controller in controllers.split(",") if controllers else [""]:
            if controller.startswith("name="):
                continue
            paths[controller] = path
    return paths


def ancestors(path):
    """'/a/b' -> ['/a/b', '/a', '/'] (the limits of every ancestor apply)."""
    path = "/" + path.strip("/")
    out = [path]
    while path != "/":
        path = os.path.dirname(path)
        out.append(path)
    return out


def parse_memory_limit(text):
    """A memory.max / memory.limit_in_bytes value in bytes, or None when unlimited."""
    text = text.strip()
    if not text or text == "max":
        return None
    value = int(text)
    if value <= 0 or value >= UNLIMITED_V1:
        return None
    return value


def parse_cpu_limit(v2_text=None, v1_quota=None, v1_period=None):
    """CPUs allowed by a cgroup's quota (float), or None when unlimited."""
    if v2_text is not None:
        fields = v2_text.split()
        if not fields or fields[0] == "max":
            return None
        period = int(fields[1]) if len(fields) > 1 else 100000
        return int(fields[0]) / period
    if v1_quota is not None:
        quota = int(v1_quota.strip())
        if quota <= 0:
            return None
        return quota / int((v1_period or "100000").strip())
    return None


def effective_resources(read, proc_cgroup_text, meminfo_text, affinity_cpus):
    """Compute the result from file contents; `read(path)` returns a file's text or None."""
    machine_mb = parse_meminfo_mb(meminfo_text)
    paths = parse_proc_cgroup(proc_cgroup_text)
    memory_mb, memory_source = machine_mb, "meminfo"
    cpus, cpus_source = float(affinity_cpus), "affinity"

    mem_candidates = []
    if "memory" in paths:
        for path in ancestors(paths["memory"]):
            mem_candidates.append("/sys/fs/cgroup/memory" + path.rstrip("/") + "/memory.limit_in_bytes")
    if "" in paths:
        for path in ancestors(paths[""]):
            mem_candidates.append("/sys/fs/cgroup" + path.rstrip("/") + "/memory.max")
    for candidate in mem_candidates:
        text = read(candidate)
        limit = parse_memory_limit(text) if text is not None else None
        if limit is not None and limit // (1024 * 1024) < memory_mb:
            memory_mb, memory_source = limit // (1024 * 1024), "cgroup"

    cpu_limits = []
    cpu_path = paths.get("cpu") or paths.get("cpu,cpuacct")
    if cpu_path is not None:
        for path in ancestors(cpu_path):
            base = "/sys/fs/cgroup/cpu" + path.rstrip("/")
            quota = read(base + "/cpu.cfs_quota_us")
            if quota is not None:
                cpu_limits.append(parse_cpu_limit(v1_quota=quota, v1_period=read(base + "/cpu.cfs_period_us")))
    if "" in paths:
        for path in ancestors(paths[""]):
            text = read("/sys/fs/cgroup" + path.rstrip("/") + "/cpu.max")
            if text is not None:
                cpu_limits.append(parse_cpu_limit(v2_text=text))
    for limit in cpu_limits:
        if limit is not None and limit < cpus:
            cpus, cpus_source = limit, "cgroup"

    return {
        "memory_mb": int(memory_mb),
        "memory_source": memory_source,
        "cpus": max(1, int(math.ceil(cpus))),
        "cpus_source": cpus_source,
        "machine_memory_mb": machine_mb,
    }


def _read(path):
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError):
        return None


def host_resources():
    meminfo = _read("/proc/meminfo")
    if meminfo is None:
        raise KitModuleError("cannot read /proc/meminfo: host_resources needs Linux")
    try:
        result = effective_resources(_read, _read("/proc/self/cgroup") or "", meminfo, cpu_count())
    except ValueError as exc:
        raise KitModuleError(f"cannot work out the host's resources: {exc}") from None
    return dict(changed=False, **result)


def main():
    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    end_module(module, host_resources)


if __name__ == "__main__":
    main()
