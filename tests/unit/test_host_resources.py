"""host_resources: container limits win over what the machine has."""

import pytest
from conftest import load

hr = load("plugins/modules/host_resources.py", "host_resources")

MEMINFO = "MemTotal:       24576000 kB\nMemFree:        1000 kB\n"
V1_CGROUP = "12:memory:/docker/abc\n11:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc/init.scope\n0::/\n"
V2_CGROUP = "0::/system.slice/docker-abc.scope\n"


def reader(files):
    return lambda path: files.get(path)


def test_meminfo_only_when_no_limits():
    out = hr.effective_resources(reader({}), "", MEMINFO, 2)
    assert out == {
        "memory_mb": 24000,
        "memory_source": "meminfo",
        "cpus": 2,
        "cpus_source": "affinity",
        "machine_memory_mb": 24000,
    }


def test_cgroup_v1_container_limit():
    files = {
        "/sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": str(1024**3),
        "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712",
        "/sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us": "150000",
        "/sys/fs/cgroup/cpu/docker/abc/cpu.cfs_period_us": "100000",
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1",
    }
    out = hr.effective_resources(reader(files), V1_CGROUP, MEMINFO, 4)
    assert (out["memory_mb"], out["memory_source"]) == (1024, "cgroup")
    # 1.5 CPUs of quota round up to 2.
    assert (out["cpus"], out["cpus_source"]) == (2, "cgroup")


def test_cgroup_v2_limit_on_an_ancestor():
    files = {
        "/sys/fs/cgroup/system.slice/docker-abc.scope/memory.max": "max",
        "/sys/fs/cgroup/system.slice/memory.max": str(2 * 1024**3),
        "/sys/fs/cgroup/system.slice/docker-abc.scope/cpu.max": "max 100000",
    }
    out = hr.effective_resources(reader(files), V2_CGROUP, MEMINFO, 2)
    assert (out["memory_mb"], out["memory_source"]) == (2048, "cgroup")
    assert (out["cpus"], out["cpus_source"]) == (2, "affinity")


def test_limit_above_machine_memory_is_ignored():
    files = {"/sys/fs/cgroup/system.slice/docker-abc.scope/memory.max": str(64 * 1024**3)}
    out = hr.effective_resources(reader(files), V2_CGROUP, MEMINFO, 2)
    assert out["memory_source"] == "meminfo"


def test_v2_cpu_quota():
    files = {"/sys/fs/cgroup/system.slice/docker-abc.scope/cpu.max": "50000 100000"}
    out = hr.effective_resources(reader(files), V2_CGROUP, MEMINFO, 8)
    assert (out["cpus"], out["cpus_source"]) == (1, "cgroup")


@pytest.mark.parametrize("text,expected", [("max", None), ("", None), ("0", None), ("9223372036854771712", None), ("1073741824\n", 1073741824)])
def test_parse_memory_limit(text, expected):
    assert hr.parse_memory_limit(text) == expected


def test_ancestors():
    assert hr.ancestors("/a/b") == ["/a/b", "/a", "/"]
    assert hr.ancestors("/") == ["/"]


def test_parse_proc_cgroup_skips_named_hierarchies():
    paths = hr.parse_proc_cgroup(V1_CGROUP)
    assert paths["memory"] == "/docker/abc"
    assert paths["cpu"] == "/docker/abc"
    assert "name=systemd" not in paths


def test_meminfo_without_memtotal_is_an_error():
    with pytest.raises(ValueError, match="MemTotal"):
        hr.parse_meminfo_mb("MemFree: 1 kB\n")
