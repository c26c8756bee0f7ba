"""The pool health benchmark: one row per setting with the three pool choices, and its docs block."""

from __future__ import annotations

from airflow_spot_training.simulate.traces import Trace
from benchmarks import pool_health as bench

# two-minute steps; pool 0 reclaims for one step every 20, pool 1 once, pool 2 never. Three jobs of
# 8 h in 16 h start within 4 h of each other, so a fleet's later jobs know pool 0 from the first
STEPS = 900
FLAPPING = Trace("flapping", 120.0, tuple(step % 20 < 19 for step in range(STEPS)))
ONCE = Trace("once", 120.0, tuple(step != 330 for step in range(STEPS)))
STABLE = Trace("stable", 120.0, (True,) * STEPS)


def test_a_row_replays_the_same_jobs_with_pool_health_off_on_and_shared():
    row = bench.run_row([FLAPPING, ONCE, STABLE], "greedy", 8, 16, n_offsets=3)
    assert row["jobs"] == 3 and set(row) == {"jobs", "off", "on", "fleet"}
    # alone, each job is first reclaimed in pool 0 (5 reclaims in 3 jobs); a fleet's later jobs know
    # pool 0 from the first one's reclaim and start elsewhere (3 in 3)
    assert row["off"]["preemptions"] == row["on"]["preemptions"] == 5 / 3
    assert row["fleet"]["preemptions"] == 1.0
    assert row["fleet"]["cost"] < row["off"]["cost"]
    assert all(row[mode]["misses"] == 0 for mode in ("off", "on", "fleet"))


def test_the_table_has_one_line_per_row_and_the_docs_have_its_markers():
    row = bench.run_row([FLAPPING, STABLE], "greedy", 8, 16, n_offsets=1)
    text = bench.table([("preemption/1-node/made-up", "as listed: flapping, stable", "greedy", (8, 16), row)])
    lines = text.splitlines()
    assert len(lines) == 3 and lines[2].startswith("| made-up | as listed: flapping, stable | greedy | 8 / 16 | 1 |")
    doc = bench.DOCS.read_text()
    assert bench.TABLE_START in doc and bench.TABLE_END in doc
    assert "| aws-04-22-2023 |" in doc  # the committed figures are there
