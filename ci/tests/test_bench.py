"""ci/bench reports whatever happens: a run behind its schedule is a row, and a
bench that stops early still writes every row it measured."""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent

REPORT = {"accepted_per_s": 4100.0, "request_latency_ms": {"p50": 5.0, "p99": 60.0, "max": 90.0},
          "counted": {"end_to_end_per_s": 4050.0, "exact": True, "redis_post_to_counted_ms": {"p50": 70, "p99": 90},
                      "valkey_post_to_counted_ms": {"p50": 6, "p99": 20}}}


@pytest.fixture
def bench(monkeypatch, tmp_path):
    # What ci/bench exports before it runs bench.py (read when stack.py is imported).
    for name, value in {"CLIMA_BENCH_OUT": str(tmp_path), "CLIMA_ROOT": str(ROOT), "CLIMA_STATE": str(tmp_path),
                        "API_PORT": "8080"}.items():
        monkeypatch.setenv(name, value)
    import bench as module
    monkeypatch.setattr(module, "OUT", tmp_path)
    monkeypatch.setattr(module, "machine", lambda: {"commit": "test"})
    monkeypatch.setattr(module, "service_settings", lambda: {})
    return module


def test_a_run_behind_its_schedule_is_a_row_that_says_so(bench, monkeypatch):
    behind = {**REPORT, "schedule": {"behind": True, "sent_tweets_per_s": 4100.0}}
    monkeypatch.setattr(bench, "load_report", lambda *args, check=True: (behind, 1))
    run = bench.load("--rate", 5000)
    assert run["failed"] == "behind its schedule"
    [row] = bench.run_rows({"open_5000": run})
    assert "(**behind its schedule**)" in row and "4,100" in row


def test_a_run_without_a_report_stops_the_bench(bench, monkeypatch):
    monkeypatch.setattr(bench, "load_report", lambda *args, check=True: (None, 2))
    with pytest.raises(bench.RowFailed):
        bench.load("--count", 10)


def test_a_bench_that_stops_early_keeps_every_row_it_measured(bench, monkeypatch, tmp_path):
    def measure(result):
        result["clima"] = {"open_1000": REPORT}
        raise bench.RowFailed("clima load exited 2 without a report")
    monkeypatch.setattr(bench, "measure", measure)
    with pytest.raises(SystemExit, match="stopped early"):
        bench.main()
    written = json.loads((tmp_path / "bench.json").read_text())
    assert written["clima"]["open_1000"] == REPORT and "without a report" in written["error"]
    table = (tmp_path / "bench.md").read_text()
    assert "open loop, 1,000 tweets/s" in table and "stopped early" in table


def test_runs_measured_before_a_failure_are_kept(bench, monkeypatch):
    calls = []

    def load(*args):
        calls.append(args)
        if len(calls) > 1:
            raise bench.RowFailed("clima load exited 2 without a report")
        return dict(REPORT)
    monkeypatch.setattr(bench, "load", load)
    monkeypatch.setattr(bench, "histograms", dict)
    monkeypatch.setattr(bench, "breakdown", lambda *args: {})
    runs = {}
    with pytest.raises(bench.RowFailed):
        bench.end_to_end(runs)
    assert list(runs) == ["open_1000"]


def test_a_failed_run_outside_the_rows_still_fails_the_bench(bench, monkeypatch):
    monkeypatch.setattr(bench, "FAILED_RUNS", [])
    monkeypatch.setattr(bench, "load_report", lambda *args, check=True: ({**REPORT, "counted": None}, 1))
    bench.load("--count", 10)
    monkeypatch.setattr(bench, "measure", lambda result: None)
    monkeypatch.setattr(bench, "markdown", lambda result: "")
    with pytest.raises(SystemExit, match="runs that failed"):
        bench.main()
