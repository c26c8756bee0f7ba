"""The escalation-policy benchmark: its tuning/held-out split, its per-setting table, its docs block."""

from __future__ import annotations

import pytest

from airflow_spot_training.simulate.traces import Trace
from benchmarks import escalation_policies as bench


class TestSplit:
    def test_halves_are_disjoint_deterministic_and_cover_their_half(self):
        tuning = bench.start_offsets(1000, "tuning", 24)
        held_out = bench.start_offsets(1000, "held-out", 24)
        assert len(tuning) == len(held_out) == 24
        assert all(0 <= s < 500 for s in tuning) and all(500 <= s < 1000 for s in held_out)
        assert tuning == bench.start_offsets(1000, "tuning", 24)
        assert held_out[0] == 500 and tuning[-1] > 450


@pytest.fixture(scope="module")
def summary():
    """One job per setting and overhead on a made-up two-day trace, both halves."""
    trace = Trace("made-up", 600.0, tuple(([True] * 9 + [False] * 3) * 24))
    rows = []
    for half in bench.HALVES:
        rows += bench.run_case(("made-up", [trace], 1, "single", half, True))
    return bench.summarize(rows)


class TestTable:
    def test_one_line_per_setting_and_overhead_plus_all(self, summary):
        lines = bench.table(summary, "held-out").splitlines()
        assert len(lines) == 2 + len(bench.SETTINGS) * len(bench.OVERHEADS) + 1
        assert lines[-1].startswith("| single | all |")
        assert "| single | 48 | 52 | 0.2 | 1 |" in "\n".join(lines)

    def test_no_policy_misses_and_the_optimum_is_a_lower_bound(self, summary):
        for (half, row, policy), cell in summary.items():
            assert cell["misses"] == 0, (half, row, policy)
            assert cell["optimum"] <= cell["cost"] + 1e-9, (half, row, policy)

    def test_verdict_names_the_rows(self, summary):
        lines = bench.verdict(summary, "tuning")
        assert lines[0].startswith("tuning half: ours above the better baseline on ")
        assert "of 10 rows" in lines[0] and "deadline misses, all policies: 0" in lines[2]


def test_update_docs_rewrites_only_the_marked_block(summary, tmp_path, monkeypatch):
    doc = tmp_path / "policies.md"
    doc.write_text(f"# Title\n\nprose\n\n{bench.TABLE_START}\nold table\n{bench.TABLE_END}\n\nmore prose\n")
    monkeypatch.setattr(bench, "DOCS", doc)
    monkeypatch.setattr(bench, "DOCS_PLOT", tmp_path / "plot.png")
    bench.update_docs(summary, "held-out", "header line")
    text = doc.read_text()
    assert text.startswith("# Title\n\nprose\n\n") and text.endswith("\n\nmore prose\n")
    assert "old table" not in text and "header line" in text and "| single | all |" in text
    assert (tmp_path / "plot.png").stat().st_size > 0
    bench.update_docs(summary, "held-out", "header line")
    assert doc.read_text() == text  # idempotent


def test_the_policies_page_carries_a_generated_table_for_every_row():
    text = bench.DOCS.read_text()
    block = text[text.index(bench.TABLE_START):text.index(bench.TABLE_END)]
    for mode in ("single", "multi"):
        for work, deadline in bench.SETTINGS:
            for overhead in bench.OVERHEADS:
                assert f"| {mode} | {work} | {deadline} | {overhead} |" in block, (mode, work, deadline, overhead)
