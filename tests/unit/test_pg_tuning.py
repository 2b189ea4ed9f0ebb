"""The pg_tune filter: host sizes -> settings."""

import pytest
from conftest import load

tuning = load("plugins/filter/pg_tuning.py", "pg_tuning")
pg_tune = tuning.pg_tune


# memory_mb, cpus -> shared_buffers, effective_cache_size, work_mem, maintenance_work_mem
SIZES = [
    # The guide's server: 1 GiB -> its 256MB / 4MB / 64MB.
    (1024, 1, "256MB", "768MB", "4MB", "64MB"),
    (2048, 2, "512MB", "1536MB", "5MB", "128MB"),
    (4096, 2, "1024MB", "3072MB", "10MB", "256MB"),
    (16384, 8, "4096MB", "12288MB", "40MB", "1024MB"),
    # maintenance_work_mem stops at 2GB.
    (65536, 16, "16384MB", "49152MB", "163MB", "2048MB"),
    # work_mem never below 4MB, even on a small host.
    (512, 1, "128MB", "384MB", "4MB", "32MB"),
]


@pytest.mark.parametrize("memory_mb,cpus,sb,ecs,wm,mwm", SIZES)
def test_memory_settings(memory_mb, cpus, sb, ecs, wm, mwm):
    out = pg_tune({"memory_mb": memory_mb, "cpus": cpus})
    assert (out["shared_buffers"], out["effective_cache_size"], out["work_mem"], out["maintenance_work_mem"]) == (
        sb,
        ecs,
        wm,
        mwm,
    )


def test_guide_values_at_one_gib():
    out = pg_tune({"memory_mb": 1024, "cpus": 2})
    assert out["shared_buffers"] == "256MB"
    assert out["work_mem"] == "4MB"
    assert out["maintenance_work_mem"] == "64MB"


def test_work_mem_follows_max_connections():
    assert pg_tune({"memory_mb": 16384, "cpus": 4}, max_connections=400)["work_mem"] == "10MB"
    assert pg_tune({"memory_mb": 16384, "cpus": 4}, max_connections=50)["work_mem"] == "81MB"
    assert pg_tune({"memory_mb": 16384, "cpus": 4}, max_connections=50)["max_connections"] == "50"


@pytest.mark.parametrize(
    "cpus,workers,per_gather,maint,max_worker",
    [(1, "1", "0", "1", "8"), (2, "2", "1", "1", "8"), (8, "8", "4", "4", "8"), (32, "32", "16", "4", "32")],
)
def test_parallelism_follows_cpus(cpus, workers, per_gather, maint, max_worker):
    out = pg_tune({"memory_mb": 4096, "cpus": cpus})
    assert out["max_parallel_workers"] == workers
    assert out["max_parallel_workers_per_gather"] == per_gather
    assert out["max_parallel_maintenance_workers"] == maint
    assert out["max_worker_processes"] == max_worker


def test_storage_class():
    assert pg_tune({"memory_mb": 4096, "cpus": 2}, storage="ssd")["random_page_cost"] == "1.1"
    hdd = pg_tune({"memory_mb": 4096, "cpus": 2}, storage="hdd")
    assert (hdd["random_page_cost"], hdd["effective_io_concurrency"]) == ("4", "2")


def test_checkpoint_and_wal_settings_present():
    out = pg_tune({"memory_mb": 4096, "cpus": 2})
    assert out["checkpoint_completion_target"] == "0.9"
    assert out["max_wal_size"] == "2GB"


def test_jinja_may_pass_strings_and_floats():
    assert pg_tune({"memory_mb": "1024", "cpus": 1.0})["shared_buffers"] == "256MB"


@pytest.mark.parametrize(
    "resources,kwargs,needle",
    [
        ({"memory_mb": 0, "cpus": 1}, {}, "memory_mb"),
        ({"memory_mb": -5, "cpus": 1}, {}, "memory_mb"),
        ({"memory_mb": "lots", "cpus": 1}, {}, "memory_mb"),
        ({"memory_mb": 1024, "cpus": True}, {}, "cpus"),
        ({"memory_mb": 1024}, {}, "cpus"),
        ({"memory_mb": 1024, "cpus": 1}, {"max_connections": 0}, "max_connections"),
        ({"memory_mb": 1024, "cpus": 1}, {"storage": "nvme"}, "storage"),
        ({"memory_mb": 128, "cpus": 1}, {}, "256 MiB"),
        ("1024", {}, "mapping"),
    ],
)
def test_bad_input_names_the_value(resources, kwargs, needle):
    with pytest.raises(tuning.TuningError, match=needle):
        pg_tune(resources, **kwargs)


def test_filter_is_registered():
    assert tuning.FilterModule().filters()["pg_tune"] is pg_tune
