"""Filter `pg_tune`: PostgreSQL settings computed from a host's memory and CPUs.

Pure function, no I/O; unit-tested in tests/unit/test_pg_tuning.py.

    {{ host_resources_result | pg_tune(max_connections=100, storage='ssd') }}

The input is a mapping with `memory_mb` and `cpus` (what the `host_resources`
module returns: the container's limits where they are set, since facts report
the whole machine). The output maps setting names to values in the units
PostgreSQL accepts, ready for ALTER SYSTEM.

The rules, and why:
- shared_buffers: 25% of memory, the usual starting point; on the guide's
  1 GiB server that is its 256MB.
- effective_cache_size: 75% of memory (what the OS cache plus shared buffers
  can hold); a planner hint, allocates nothing.
- work_mem: what is left after shared_buffers, shared by max_connections
  sessions each running up to three sorts/hashes at once; never below 4MB
  (the guide's value, PostgreSQL's default) and never above 1GB.
- maintenance_work_mem: memory / 16 (64MB at 1 GiB as in the guide), at most 2GB.
- WAL and checkpoints: spread checkpoints (0.9 of a 15 min interval) with room
  for 2GB of WAL between them, compressed full-page writes.
- Planner costs follow the storage class; parallelism follows the CPUs.
"""

from __future__ import annotations

MIB_PER_GIB = 1024


class TuningError(ValueError):
    """Raised with a message that names the offending input."""


def _positive_int(value, name):
    """Accept an int, an integral float or a string of digits (Jinja may hand any of them)."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    if number is None or number <= 0:
        raise TuningError(f"pg_tune: {name} must be a positive integer, got {value!r}")
    return number


def _mb(value):
    return f"{int(value)}MB"


def pg_tune(resources, max_connections=100, storage="ssd"):
    """Return ALTER SYSTEM settings for a host with resources['memory_mb'] and resources['cpus']."""
    if not isinstance(resources, dict):
        raise TuningError(f"pg_tune: expects a mapping with memory_mb and cpus, got {type(resources).__name__}")
    for key in ("memory_mb", "cpus"):
        if key not in resources:
            raise TuningError(f"pg_tune: the input lacks {key}")
    memory_mb = _positive_int(resources["memory_mb"], "memory_mb")
    cpus = _positive_int(resources["cpus"], "cpus")
    max_connections = _positive_int(max_connections, "max_connections")
    if storage not in ("ssd", "hdd"):
        raise TuningError(f"pg_tune: storage must be 'ssd' or 'hdd', got {storage!r}")
    if memory_mb < 256:
        raise TuningError(f"pg_tune: memory_mb={memory_mb} is below the 256 MiB PostgreSQL needs to run usefully")

    shared_buffers = memory_mb // 4
    effective_cache_size = memory_mb * 3 // 4
    work_mem = (memory_mb - shared_buffers) // (max_connections * 3)
    work_mem = min(max(work_mem, 4), MIB_PER_GIB)
    maintenance_work_mem = min(memory_mb // 16, 2 * MIB_PER_GIB)

    settings = {
        "max_connections": str(max_connections),
        "shared_buffers": _mb(shared_buffers),
        "effective_cache_size": _mb(effective_cache_size),
        "work_mem": _mb(work_mem),
        "maintenance_work_mem": _mb(maintenance_work_mem),
        "min_wal_size": "256MB",
        "max_wal_size": "2GB",
        "checkpoint_timeout": "15min",
        "checkpoint_completion_target": "0.9",
        # lz4: Debian builds PostgreSQL with it; cheaper than pglz (what "on" means).
        "wal_compression": "lz4",
        "random_page_cost": "1.1" if storage == "ssd" else "4",
        "effective_io_concurrency": "200" if storage == "ssd" else "2",
        # Background workers: PostgreSQL's default of 8 unless the host has more CPUs
        # (a change here needs a restart, so the default is kept where it suffices).
        "max_worker_processes": str(max(8, cpus)),
        "max_parallel_workers": str(cpus),
        # One CPU: parallel plans only add overhead.
        "max_parallel_workers_per_gather": str(cpus // 2),
        "max_parallel_maintenance_workers": str(min(4, max(1, cpus // 2))),
    }
    return settings


class FilterModule:
    """Ansible filter plugin entry point."""

    def filters(self):
        return {"pg_tune": pg_tune}
