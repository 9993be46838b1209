"""Smoke test of benchmarks/selection.py: its --quick path on a tiny grid, in a few seconds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCHMARK = Path(__file__).resolve().parent.parent / "benchmarks" / "selection.py"


@pytest.fixture(scope="module")
def bench():
    if not BENCHMARK.exists():
        pytest.skip("benchmarks/selection.py is not in this checkout")
    spec = importlib.util.spec_from_file_location("tokenprune_benchmark_selection", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_quick_run_writes_expected_json(bench, tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "results" / "selection.json"
    try:
        status = bench.main(
            ["--quick", "--n", "64", "--d", "32", "--batch", "1,2", "--warmup", "0", "--json", str(out), "--quiet"]
        )
    finally:
        torch.set_num_threads(threads)
    assert status == 0
    results = json.loads(out.read_text())
    assert {"meta", "grid", "sanity", "measurements", "checks", "complete"} <= results.keys()
    meta = results["meta"]
    for key in ("git_commit", "torch_version", "device_name", "cpu_model", "threads", "python_version", "timestamp"):
        assert key in meta
    assert meta["threads"] == 1
    assert results["complete"] is True
    assert results["sanity"]["agree"], results["sanity"]["mismatches"]
    assert results["grid"]["n"] == [64] and results["grid"]["d"] == [32] and results["grid"]["batch"] == [1, 2]

    methods = set(results["grid"]["methods"]) | {bench.BASELINE}
    rows = results["measurements"]
    assert {(m["method"], m["batch"]) for m in rows} == {(name, b) for name in methods for b in (1, 2)}
    for m in rows:
        for key in ("median_s", "q1_s", "q3_s", "min_s", "max_s", "per_image_s", "times_s", "loop_over_method"):
            assert key in m
        assert m["n"] == 64 and m["d"] == 32 and m["k"] == 6 and m["repeats"] == 1
        assert m["per_image_s"] == pytest.approx(m["median_s"] / m["batch"])
        assert (m["batch_scaling"] is not None) == (m["batch"] == 2)
    assert any(c["name"] == "divprune speedup vs loop" for c in results["checks"])
    stdout = capsys.readouterr().out
    assert "divprune-loop" in stdout and "Targets:" in stdout
    summary = bench.summary_table(rows).splitlines()
    assert len(summary) == 2 + 2  # header, rule, one row per (N, D, B)
    assert bench.main(["--report", str(out), "--table", "markdown"]) == 0  # re-render a saved run


def test_baseline_matches_divprune(bench):
    import tokenprune

    visual = bench.make_inputs(80, 16, 3, seed=7, dtype=torch.float64)["visual"]
    ours = tokenprune.create_method("divprune")(visual, budget=9)
    reference = bench.divprune_loop(visual, 9)
    assert reference.shape == (3, 9) and reference.dtype == torch.int64
    assert torch.equal(ours, torch.sort(reference, dim=1).values)
    # float32 inputs run too, and keep distinct tokens
    single = bench.divprune_loop_single(visual[0].float(), 9)
    assert single.unique().numel() == 9
