"""pg_schema_migrate: which files are versions, and what is pending."""

import pytest
from conftest import load

mig = load("plugins/modules/pg_schema_migrate.py", "pg_schema_migrate")


def test_discover_orders_and_ignores_other_files():
    found = mig.discover(["0003_c.sql", "schema.sql", "README.md", "0002_add_index.sql"])
    assert found == [(1, "schema", "schema.sql"), (2, "add_index", "0002_add_index.sql"), (3, "c", "0003_c.sql")]


@pytest.mark.parametrize(
    "names,needle",
    [
        (["schema.sql", "2_x.sql"], "NNNN_name.sql"),
        (["schema.sql", "0001_x.sql"], "version 1 is schema.sql"),
        (["schema.sql", "0002_a.sql", "0002_b.sql"], "both claim version 2"),
        (["0002_a.sql"], "schema.sql"),
    ],
)
def test_discover_rejects_bad_names(names, needle):
    with pytest.raises(mig.PlanError, match=needle):
        mig.discover(names)


def files(*versions):
    return [(v, f"m{v}", f"{v:04d}_m{v}.sql", mig.checksum(f"sql {v}")) for v in versions]


def test_plan_everything_pending_on_a_new_database():
    assert [p[0] for p in mig.plan(files(1, 2, 3), {})] == [1, 2, 3]


def test_plan_only_new_versions():
    applied = {1: mig.checksum("sql 1"), 2: mig.checksum("sql 2")}
    assert [p[0] for p in mig.plan(files(1, 2, 3), applied)] == [3]


def test_plan_nothing_when_up_to_date():
    applied = {1: mig.checksum("sql 1")}
    assert mig.plan(files(1), applied) == []


def test_edited_applied_file_is_refused():
    with pytest.raises(mig.PlanError, match="changed after it was applied"):
        mig.plan(files(1, 2), {1: mig.checksum("sql 1"), 2: mig.checksum("edited")})


def test_unknown_applied_version_is_refused():
    with pytest.raises(mig.PlanError, match="version 7"):
        mig.plan(files(1), {1: mig.checksum("sql 1"), 7: "x"})


def test_checksum_is_sha256_hex():
    assert len(mig.checksum("x")) == 64
