"""The comparison runner end to end on a tiny random LLaVA saved to disk: records, harness, resume, summary.

The model is ``tiny_llava`` with a real ``LlavaProcessor`` whose tokenizer gives every id a word, so that the
predictions of different configurations differ visibly; the benchmark is ``scenes`` (generated offline).
LLaVA-NeXT and Qwen2.5-VL run once too, with their real processors, on a local POPE copy. Qwen2.5-VL's
loads for images only: its video processor needs torchvision, which these CPU machines do not install.
"""

import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch

from tokenprune.errors import InputError
from tokenprune.evaluation import aggregate, compare_metric, mcnemar_exact, paired_bootstrap, pope_f1_statistic
from tokenprune.evaluation.datasets import Sample, load_benchmark
from tokenprune.evaluation.flops import DecoderShape, prefill_flops
from tokenprune.evaluation.report import summarize
from tokenprune.evaluation.runner import (
    BenchmarkRun,
    Comparison,
    RunConfig,
    read_records,
    run_comparison,
    score_sample,
)
from tokenprune.evaluation.significance import holm, score_interval
from tokenprune.evaluation.specs import MethodConfig
from tokenprune.testing.models import tiny_llava, tiny_llava_processor

pytest.importorskip("PIL")

METHODS = "zspa,zspa:core_ratio=0.5,pooling=max,divprune"
RUN = {"methods": METHODS, "keeps": (0.25, 0.5), "limit": 6, "seed": 0}
N_CONFIGS = 1 + 3 * 2  # none, then three methods at two keep ratios


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as compare uses on CPU: a tiny model gains nothing from more and loses a lot when busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    model = tiny_llava(seed=0)
    path = tmp_path_factory.mktemp("tiny-llava")
    model.save_pretrained(path)
    tiny_llava_processor(model, full_vocab=True).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def baseline(model_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("baseline")
    return run_comparison(**RUN, model=model_dir, batch_size=3, output=output)


def _predictions(comparison):
    return {key: record["prediction"] for key, record in comparison.records.items()}


def test_every_configuration_gets_a_record_per_sample(baseline):
    assert [(c.label, c.keep) for c in baseline.configs] == [
        ("none", 1.0),
        ("zspa", 0.25),
        ("zspa", 0.5),
        ("zspa:core_ratio=0.5,pooling=max", 0.25),
        ("zspa:core_ratio=0.5,pooling=max", 0.5),
        ("divprune", 0.25),
        ("divprune", 0.5),
    ]
    (run,) = baseline.benchmarks
    assert run.name == "scenes" and len(run.samples) == 6 and run.max_new_tokens == 8
    assert baseline.computed == len(baseline.records) == 6 * N_CONFIGS and baseline.reused == 0
    for config in baseline.configs:
        records = baseline.records_for(config, run)
        assert [r["sample_id"] for r in records] == [s.id for s in run.samples]
        assert {r["visual_before"] for r in records} == {16}  # tiny_llava: 16 visual tokens per image
        assert {r["visual_after"] for r in records} == {round(16 * config.keep)}
        assert all(r["prefill_ms"] > 0 and r["peak_mem_mb"] is None for r in records)  # no allocator stats on CPU
        reference = config.method.is_reference
        assert all((r["selection_ms"] == 0) == reference for r in records)
        for record, sample in zip(records, run.samples, strict=True):
            assert record["score"] == score_sample(sample, record["prediction"])[0]
            assert record["family"] == sample.extra["family"]
    # the predictions are not all alike: the configurations really differ
    assert len({r["prediction"] for r in baseline.records.values()}) > 6
    # fewer tokens, fewer FLOPs: each sample's prefill at keep 25% costs less than at 50%, and both less than none
    none, *pruned = baseline.configs
    costs = {c.keep: [r["prefill_gflops"] for r in baseline.records_for(c, run)] for c in (none, *pruned[:2])}
    assert all(0 < q < h < f for f, q, h in zip(costs[1.0], costs[0.25], costs[0.5], strict=True))


def test_the_none_row_is_the_stock_model_one_sample_at_a_time(model_dir, baseline):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    expected = []
    for sample in load_benchmark("scenes", limit=6, seed=0):
        chat = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sample.question}]}]
        text = processor.apply_chat_template(chat, add_generation_prompt=True)
        inputs = processor(images=list(sample.images), text=[text], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=8, do_sample=False, pad_token_id=0)
        expected.append(processor.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    (run,) = baseline.benchmarks
    assert [r["prediction"] for r in baseline.records_for(baseline.configs[0], run)] == expected


def test_predictions_do_not_depend_on_the_batch_size(model_dir, baseline):
    one = run_comparison(**RUN, model=model_dir, batch_size=1, output=None)
    assert _predictions(one) == _predictions(baseline)
    assert one.computed == 6 * N_CONFIGS


def test_an_interrupted_run_resumes_where_it_stopped(model_dir, baseline, tmp_path):
    class Stop(Exception):
        pass

    def stop_after_first_batch(number):
        if number == 0:
            raise Stop

    with pytest.raises(Stop):
        run_comparison(**RUN, model=model_dir, batch_size=3, output=tmp_path, after_batch=stop_after_first_batch)
    on_disk = read_records(tmp_path)
    assert len(on_disk) == 3 * N_CONFIGS  # the first batch of 3 samples, every configuration, flushed
    with (tmp_path / "predictions.rank0.jsonl").open("a") as handle:
        handle.write('{"key": "cut short by a ki')  # a kill in the middle of a write

    seen = []
    resumed = run_comparison(
        **RUN, model=model_dir, batch_size=3, output=tmp_path, progress=lambda done, total: seen.append((done, total))
    )
    assert (resumed.computed, resumed.reused) == (3 * N_CONFIGS, 3 * N_CONFIGS)
    assert seen[0] == (0, 3 * N_CONFIGS) and seen[-1] == (3 * N_CONFIGS, 3 * N_CONFIGS)
    assert _predictions(resumed) == _predictions(baseline)
    summary, expected = summarize(resumed), summarize(baseline)
    for row, want in zip(summary["results"], expected["results"], strict=True):
        assert (row["label"], row["keep"], row["score"], row["p_value_vs_none"]) == (
            want["label"],
            want["keep"],
            want["score"],
            want["p_value_vs_none"],
        )
    assert len(read_records(tmp_path)) == 6 * N_CONFIGS  # the cut line was skipped, nothing duplicated

    again = run_comparison(**RUN, model=model_dir, batch_size=2, output=tmp_path)  # batch size is not in the key
    assert (again.computed, again.reused) == (0, 6 * N_CONFIGS)


def test_records_are_keyed_by_method_parameters_keep_and_seed(model_dir, baseline, tmp_path):
    import shutil

    output = shutil.copytree(baseline.metadata["output"], tmp_path / "records")
    more = run_comparison(
        "zspa:core_ratio=0.2,random", keeps=(0.25,), limit=6, seed=0, model=model_dir, batch_size=3, output=output
    )
    # none and zspa (core_ratio=0.2 is its default) at 25% are reused; only random is new
    assert (more.computed, more.reused) == (6, 12)
    other_seed = run_comparison("zspa", keeps=(0.25,), limit=2, seed=1, model=model_dir, output=output)
    assert other_seed.computed == 2 * 2
    no_resume = run_comparison("zspa", keeps=(0.25,), limit=2, seed=0, model=model_dir, output=output, resume=False)
    assert no_resume.computed == 2 * 2


def test_positions_are_part_of_a_configuration_and_of_its_records(model_dir, baseline, tmp_path):
    import shutil

    from tokenprune.evaluation.report import summarize

    output = shutil.copytree(baseline.metadata["output"], tmp_path / "records")
    run = run_comparison(
        "zspa,zspa:positions=contiguous,zspa:positions=original",
        keeps=(0.25,),
        limit=6,
        seed=0,
        model=model_dir,
        batch_size=3,
        output=output,
    )
    assert [config.label for config in run.configs] == [
        "none",
        "zspa",
        "zspa:positions=contiguous",
        "zspa:positions=original",
    ]
    assert (run.computed, run.reused) == (12, 12), "none and zspa (the model's default) come from the baseline"
    bench = run.benchmarks[0]
    default, contiguous, original = (run.records_for(config, bench) for config in run.configs[1:])
    assert [r["prediction"] for r in default] == [r["prediction"] for r in contiguous]  # LLaVA's default
    assert {r["positions"] for r in original} == {"original"} and {r["positions"] for r in contiguous} == {"contiguous"}
    assert {r["positions"] for r in default} == {"contiguous"}, "records say what ran: here LLaVA's default"
    rows = summarize(run)["results"]
    assert [row["positions"] for row in rows] == [None, "contiguous", "contiguous", "original"]
    everything = run_comparison("zspa", keeps=(0.25,), limit=6, model=model_dir, output=output, positions="original")
    assert everything.computed == 0 and everything.configs[1].label == "zspa:positions=original"


def test_the_summary_matches_significance_py_on_the_same_records(baseline):
    summary = summarize(baseline, n_resamples=200)
    (run,) = baseline.benchmarks
    results = summary["results"]
    assert [(r["method"], r["keep"]) for r in results] == [(c.method.name, c.keep) for c in baseline.configs]
    scores = {c.id: [r["score"] for r in baseline.records_for(c, run)] for c in baseline.configs}
    none = scores[baseline.configs[0].id]
    for row, config in zip(results, baseline.configs, strict=True):
        mine = scores[config.id]
        assert row["score"] == aggregate("exact_match_any", mine) and row["n"] == 6
        assert row["score_ci"] == list(score_interval("exact_match_any", mine))
        assert row["relative"] == (row["score"] / aggregate("exact_match_any", none) if any(none) else None)
        assert row["params"] == dict(config.method.params)
        if config.method.is_reference:
            assert row["p_value_vs_none"] is None and row["vs_none"] is None
        else:
            assert row["p_value_vs_none"] == mcnemar_exact(mine, none).p_value
            assert row["test_vs_none"] == "mcnemar_exact"
        assert list(row["families"]) == ["existence", "attribute", "counting", "spatial", "text", "multiple_choice"]
        assert all(entry["n"] == 1 for entry in row["families"].values())
    pairs = summary["pairwise"]
    assert [(p["label_a"], p["label_b"], p["keep"]) for p in pairs] == [
        ("zspa", "zspa:core_ratio=0.5,pooling=max", 0.25),
        ("zspa", "divprune", 0.25),
        ("zspa:core_ratio=0.5,pooling=max", "divprune", 0.25),
        ("zspa", "zspa:core_ratio=0.5,pooling=max", 0.5),
        ("zspa", "divprune", 0.5),
        ("zspa:core_ratio=0.5,pooling=max", "divprune", 0.5),
    ]
    by_label = {(c.label, c.keep): scores[c.id] for c in baseline.configs}
    for pair in pairs:
        a, b = by_label[pair["label_a"], pair["keep"]], by_label[pair["label_b"], pair["keep"]]
        assert pair["p_value"] == compare_metric("exact_match_any", a, b).p_value
    # Holm within each family of tests: the rows against none, the question families, the pairs
    assert [r["p_holm_vs_none"] for r in results] == holm([r["p_value_vs_none"] for r in results])
    assert results[0]["p_holm_vs_none"] is None
    families = [entry for r in results for entry in r["families"].values()]
    assert [e["p_holm_vs_none"] for e in families] == holm([e["p_value_vs_none"] for e in families])
    assert [p["p_holm"] for p in pairs] == holm([p["p_value"] for p in pairs])
    assert "holm" in summary["metadata"]["significance"]["multiple_comparisons"]
    json.dumps(summary, allow_nan=False)  # strictly JSON


def _synthetic(metric, rows, *, families=None):
    """A Comparison built by hand: ``rows`` maps a method name to its per-sample (score, pope) values."""
    n = len(next(iter(rows.values())))
    samples = tuple(
        Sample(
            id=f"s{i}",
            benchmark="pope" if metric == "pope_f1" else "scenes",
            question="?",
            prompt="?",
            answers=("yes",),
            metric=metric,
            extra={} if families is None else {"family": families[i]},
        )
        for i in range(n)
    )
    run = BenchmarkRun("bench", metric, "synthetic", samples, 8)
    configs = [RunConfig(MethodConfig(name), 1.0 if name == "none" else 0.1) for name in rows]
    records = {}
    for config in configs:
        for sample, value in zip(samples, rows[config.method.name], strict=True):
            score, pope = value if isinstance(value, tuple) else (value, None)
            record = {"score": score, "selection_ms": 1.0, "prefill_ms": 2.0, "peak_mem_mb": None}
            record |= {"visual_before": 16, "visual_after": 2, "pope": pope, "prefill_gflops": 1.0 + int(sample.id[1:])}
            records[run.name, sample.id, config.id] = record
    return Comparison(configs, [run], records, {"seed": 0})


def test_relative_scores_and_mcnemar_on_hand_made_records():
    none = [1] * 8 + [0] * 2
    better = [1] * 10
    worse = [1] * 4 + [0] * 6
    families = ["a", "b"] * 5
    summary = summarize(_synthetic("exact_match", {"none": none, "x": better, "y": worse}, families=families))
    rows = {row["method"]: row for row in summary["results"]}
    assert rows["none"]["score"] == 0.8 and rows["none"]["relative"] == 1.0
    assert rows["x"]["prefill_gflops"] == pytest.approx(5.5)  # the mean of 1 .. 10
    comparison = _synthetic("exact_match", {"none": none, "x": better})
    del next(iter(comparison.records.values()))["prefill_gflops"]  # one record of none written without them
    assert summarize(comparison)["results"][0]["prefill_gflops"] is None  # not a mean over the rest
    assert rows["x"]["relative"] == pytest.approx(1.25) and rows["y"]["relative"] == pytest.approx(0.5)
    assert rows["y"]["vs_none"] == mcnemar_exact(worse, none).as_dict()
    assert rows["y"]["p_value_vs_none"] == pytest.approx(2 * 0.5**4)  # 4 discordant samples, all for none
    assert rows["y"]["families"]["a"] == {
        "score": 0.4,
        "relative": pytest.approx(0.4 / 0.8),
        "n": 5,
        "p_value_vs_none": mcnemar_exact(worse[::2], none[::2]).p_value,
        "p_holm_vs_none": holm([rows[m]["families"][f]["p_value_vs_none"] for m in "xy" for f in "ab"])[2],
        "score_ci": list(score_interval("exact_match", worse[::2])),
    }
    assert rows["y"]["p_holm_vs_none"] == min(1.0, 2 * rows["y"]["p_value_vs_none"])  # the smaller of 2 tests
    (pair,) = summary["pairwise"]
    assert pair["difference"] == pytest.approx(0.6) and pair["p_value"] == mcnemar_exact(better, worse).p_value
    assert pair["p_holm"] == pair["p_value"]  # a family of one test
    expected = mcnemar_exact(better, worse)
    assert pair["difference_ci"] == [expected.ci_low, expected.ci_high] and expected.ci_low > 0


def test_the_main_table_shows_holm_adjusted_p_values():
    """Two methods against none with raw p-values 0.5 and 0.25: the table shows 0.500 for both (Holm: 2 x 0.25,
    then the running maximum), not y's raw 0.250."""
    from rich.console import Console

    from tokenprune.cli.compare_cmd import render_tables

    none = [1] * 8 + [0] * 2
    better = [1] * 10  # 2 discordant samples, both for it: p = 0.5
    worse = [1] * 5 + [0] * 5  # 3 discordant against it: p = 0.25
    summary = summarize(_synthetic("exact_match", {"none": none, "x": better, "y": worse}))
    rows = {row["method"]: row for row in summary["results"]}
    assert (rows["x"]["p_value_vs_none"], rows["y"]["p_value_vs_none"]) == (0.5, 0.25)
    assert (rows["x"]["p_holm_vs_none"], rows["y"]["p_holm_vs_none"]) == (0.5, 0.5)
    console = Console(width=200, record=True)
    console.print(render_tables(summary)[0])
    text = console.export_text()
    cells = {}
    for line in text.splitlines():
        if line.count("│") > 6:
            row = [cell.strip() for cell in line.split("│")[1:-1]]
            cells[row[0]] = row
    assert (cells["x"][5], cells["y"][5]) == ("0.500", "0.500")
    low, high = score_interval("exact_match", worse)  # Wilson's interval of 5 / 10
    assert rows["y"]["score_ci"] == [low, high] and cells["y"][3] == f"[{100 * low:.1f}, {100 * high:.1f}]"
    assert "Holm-adjusted" in text


def test_tables_in_markdown_have_the_cells_of_the_terminal_tables():
    from rich.table import Table

    from tokenprune.cli.compare_cmd import render_tables, tables_markdown

    none, better, worse = [1] * 8 + [0] * 2, [1] * 10, [1] * 5 + [0] * 5
    tables = render_tables(summarize(_synthetic("exact_match", {"none": none, "x": better, "y": worse})))
    blocks = tables_markdown(tables).strip().split("\n\n")
    assert len(blocks) == 3 * len(tables)  # title, table, caption
    for table, (title, body, caption) in zip(tables, zip(*[iter(blocks)] * 3, strict=True), strict=True):
        assert title == f"**{' '.join(str(table.title).split())}**" and caption == " ".join(str(table.caption).split())
        header, rule, *rows = body.split("\n")
        assert header == "| " + " | ".join(str(column.header) for column in table.columns) + " |"
        assert rule.count("|") == len(table.columns) + 1
        assert rule.split("|")[1:-1] == ["---:" if c.justify == "right" else "---" for c in table.columns]
        assert len(rows) == table.row_count
        for index, row in enumerate(rows):
            assert row == "| " + " | ".join(list(column.cells)[index].plain for column in table.columns) + " |"
    odd = Table(title="t")
    odd.add_column("a|b")
    odd.add_row("x | y")
    assert tables_markdown([odd]) == "**t**\n\n| a\\|b |\n|---|\n| x \\| y |\n"


def test_pope_f1_is_bootstrapped_as_a_corpus_statistic():
    labels = [1, 0] * 10
    none = [(1.0, [label, label]) for label in labels]
    yes_always = [(float(label == 1), [1, label]) for label in labels]
    summary = summarize(_synthetic("pope_f1", {"none": none, "yes": yes_always}), n_resamples=500)
    rows = {row["method"]: row for row in summary["results"]}
    assert rows["none"]["score"] == 1.0 and rows["yes"]["score"] == pytest.approx(2 / 3)
    expected = paired_bootstrap(
        np.asarray([p for _, p in yes_always]),
        np.asarray([p for _, p in none]),
        statistic=pope_f1_statistic,
        n_resamples=500,
        seed=0,
    )
    assert rows["yes"]["test_vs_none"] == "paired_bootstrap"
    assert rows["yes"]["vs_none"] == expected.as_dict()


# --- the command line --------------------------------------------------------------------------

CLI_RUN = ["--methods", METHODS, "--keep", "0.25,0.5", "--limit", "6", "--seed", "0"]


def test_the_cli_prints_the_tables_and_writes_the_json(capsys, model_dir, baseline, tmp_path):
    from tokenprune.cli import main

    path = tmp_path / "out" / "results.json"
    argv = ["compare", *CLI_RUN, "--model", str(model_dir), "--output", baseline.metadata["output"]]
    code = main([*argv, "--batch-size", "2", "--json", str(path)])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")  # no progress bar off a terminal; transformers' logs silenced
    lines = out.splitlines()
    assert any([c.strip() for c in line.split("│")[1:3]] == ["none", "100%"] for line in lines)
    assert sum("zspa:core_ratio=0.5,pooling=max" in line for line in lines) == 2 + 2 + 4  # main, families, pairs
    assert "existence (1)" in out and "A - B" in out and "0 records computed, 42 reused" in " ".join(out.split())
    assert "Kept tokens' positions, where the label does not say: contiguous." in " ".join(out.split())

    data = json.loads(path.read_text())
    assert set(data) == {"metadata", "results", "pairwise"}
    meta = data["metadata"]
    for key in ("model", "benchmarks", "seed", "torch", "transformers", "device", "git_commit", "date", "keeps"):
        assert key in meta
    assert meta["benchmarks"] == {
        "scenes": {"source": "tokenprune.scenes split=test seed=0", "metric": "exact_match_any", "n": 6}
    }
    assert (meta["computed"], meta["reused"], meta["device"], meta["world_size"]) == (0, 42, "cpu", 1)
    # the same records give the same document (bootstrap and McNemar alike are deterministic)
    expected = json.loads(json.dumps(summarize(baseline)))
    assert data["results"] == expected["results"] and data["pairwise"] == expected["pairwise"]
    row = data["results"][1]
    for key in ("method", "params", "keep", "benchmark", "metric", "score", "relative", "selection_ms",
                "prefill_ms", "peak_mem_mb", "n", "p_value_vs_none", "families"):  # fmt: skip
        assert key in row

    code = main([*argv, "--json", "-"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["results"] == expected["results"]

    code = main([*argv, "--markdown", "-"])
    out, err = capsys.readouterr()
    assert code == 0 and "┃" not in out and "│" not in out  # Markdown only, in place of the tables
    assert out.startswith("**tiny-llava") and "| none | 100% |" in out
    assert out.count("| zspa:core_ratio=0.5,pooling=max |") == 2 + 2 + 4  # main, families, pairs
    code = main([*argv, "--markdown", str(tmp_path / "t.md"), "--json", str(tmp_path / "t.json")])
    assert code == 0 and (tmp_path / "t.md").read_text() == out and "┃" in capsys.readouterr().out
    assert main([*argv, "--markdown", "-", "--json", "-"]) == 2 and "both write to stdout" in capsys.readouterr().err


def test_all_runs_every_method_the_model_can_and_skips_the_others_with_the_reason(capsys, model_dir, tmp_path):
    """``--methods all`` on LLaVA with contiguous positions: every method that can run inside a model, except
    FastV (it prunes inside the LM, where kept tokens keep their positions), which is skipped and reported."""
    import tokenprune
    from tokenprune.cli import main

    output = tmp_path / "records"
    argv = ["compare", "--methods", "all", "--keep", "0.25", "--limit", "2", "--model", str(model_dir)]
    code = main([*argv, "--positions", "contiguous", "--output", str(output), "--json", str(tmp_path / "r.json")])
    out, err = capsys.readouterr()
    assert code == 0
    expected = [name for name in tokenprune.list_methods() if name not in ("attention", "fastv")]
    data = json.loads((tmp_path / "r.json").read_text())
    assert [row["method"] for row in data["results"]] == ["none", *expected]
    assert all(row["n"] == 2 and row["positions"] in (None, "contiguous") for row in data["results"])
    (skipped,) = data["metadata"]["skipped"]
    assert skipped == "fastv:positions=contiguous"
    assert "prunes inside the language model" in data["metadata"]["skipped"][skipped]
    assert f"skipped {skipped}: " in err and "Skipped, as this model cannot run them: fastv" in " ".join(out.split())
    assert len(read_records(output)) == 2 * (1 + len(expected))


def test_qwen2_5_vl_skips_the_cls_attention_methods_a_pattern_chose_and_refuses_those_named(tmp_path, pope_shapes):
    """Qwen2.5-VL's encoder has no [CLS] token: a pattern's fastervlm and visionzip are skipped with that reason
    (the model is loaded to decide it), and fastv's default layer 2 is not in this 2-layer model; fastervlm
    named explicitly stops the run before any record."""
    from tokenprune.integrations.base import UnsupportedScoresError
    from tokenprune.testing.models import tiny_qwen2_5_vl, tiny_qwen2_5_vl_processor

    model = tiny_qwen2_5_vl(seed=0)
    model.save_pretrained(tmp_path / "qwen")
    tiny_qwen2_5_vl_processor(model, full_vocab=True).save_pretrained(tmp_path / "qwen")
    run = {"keeps": (0.25,), "limit": 2, "model": tmp_path / "qwen", "benchmarks": [("pope", pope_shapes)]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the processor loads for images only without torchvision
        comparison = run_comparison("zspa,fast*,vision*", **run, output=None)
        assert [c.label for c in comparison.configs] == ["none", "zspa"]
        skipped = comparison.metadata["skipped"]
        assert list(skipped) == ["fastervlm", "fastv", "visionzip"]
        assert "has no CLS token" in skipped["fastervlm"] and "has no CLS token" in skipped["visionzip"]
        assert "fastv layer=2 is outside the language model's 2 layers" in skipped["fastv"]  # a 2-layer stand-in
        assert comparison.metadata["methods"] == ["zspa"]
        assert [len(comparison.records_for(c, comparison.benchmarks[0])) for c in comparison.configs] == [2, 2]
        with pytest.raises(UnsupportedScoresError, match="has no CLS token"):
            run_comparison("zspa,fastervlm", **run, output=tmp_path / "records")
        with pytest.raises(InputError, match=r"no method given can run on .*fastervlm: .*no CLS token"):
            run_comparison("fastervlm*", **run, output=tmp_path / "records")
    assert read_records(tmp_path / "records") == {}  # refused before the first batch


def test_torchrun_shards_the_samples_and_rank_0_merges(model_dir, baseline, tmp_path):
    import os
    import subprocess
    import sys

    output, path = tmp_path / "records", tmp_path / "results.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "tokenprune", "compare", *CLI_RUN, "--model", str(model_dir), "--batch-size", "2"]
    command += ["--output", str(output), "--json", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in output.iterdir()) == ["predictions.rank0.jsonl", "predictions.rank1.jsonl"]
    records = read_records(output)
    assert {key: r["prediction"] for key, r in records.items()} == {
        r["key"]: r["prediction"] for r in baseline.records.values()
    }
    assert all(r["rank"] == r["index"] % 2 for r in records.values())
    data = json.loads(path.read_text())
    assert data["metadata"]["world_size"] == 2 and data["metadata"]["computed"] == 42
    expected = summarize(baseline)
    assert [(r["label"], r["keep"], r["score"], r["p_value_vs_none"]) for r in data["results"]] == [
        (r["label"], r["keep"], r["score"], r["p_value_vs_none"]) for r in expected["results"]
    ]
    assert done.stdout.count("┃ method") == 2  # one main table and one family table, printed once (rank 0)


SIZES = [(100, 40), (60, 90), (100, 100), (40, 100), (90, 60), (56, 56)]  # (width, height) of the POPE images


@pytest.fixture(scope="module")
def pope_shapes(tmp_path_factory):
    """A local POPE copy (the hub's parquet layout) of six images, each of its own shape."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    rows = {
        "question_id": [str(i) for i in range(6)],
        "question": ["Is there a cube in the image?"] * 6,
        "answer": ["yes", "no"] * 3,
        "image_source": [f"img{i}" for i in range(6)],
        "image": [Image.new("RGB", size, (40 * i, 200 - 30 * i, 90)) for i, size in enumerate(SIZES)],
        "category": ["random"] * 6,
    }
    root = tmp_path_factory.mktemp("pope")
    parquet = root / "data" / "test-00000-of-00001.parquet"
    parquet.parent.mkdir(parents=True)
    datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image()).to_parquet(str(parquet))
    return str(root)


def _check_family_run(batched, one, tokens, positions, model):
    """Batched == one at a time; rows of a batch with different token counts; every method kept some, not all;
    each record's prefill FLOPs are those of its own sequence (FastV: full up to its layer, pruned after)."""
    assert _predictions(one) == _predictions(batched)
    assert batched.computed == 6 * len(batched.configs)
    (bench,) = batched.benchmarks
    none, *pruned = batched.configs
    assert [r["visual_before"] for r in batched.records_for(none, bench)] == tokens
    assert len(set(tokens[:3])) > 1  # the first batch of three: rows of different counts
    shape = DecoderShape.from_config(model.config)
    full = [_length_of(shape, r["prefill_gflops"]) for r in batched.records_for(none, bench)]
    for config in pruned:
        for n, length, record in zip(tokens, full, batched.records_for(config, bench), strict=True):
            assert record["visual_before"] == n and 0 < record["visual_after"] < n, (config, record)
            assert record["positions"] == ("original" if config.method.name == "fastv" else positions)
            short = length - n + record["visual_after"]
            if config.method.name == "fastv":  # layer 0 sees the full sequence, layers 1 and on the pruned one
                expected = prefill_flops(shape, length, pruned=short, prune_layer=1)
            else:
                expected = prefill_flops(shape, short)
            assert record["prefill_gflops"] == pytest.approx(expected / 1e9, rel=1e-12), (config, record)


def _run_saved(tmp_path, pope_shapes, model, processor, methods="zspa,divprune,fastv:layer=1"):
    """The model and processor saved to ``tmp_path`` and compared on the six POPE shapes at keep 25 %, in batches of
    three and one at a time (a processor saved without its video processor warns that it loads for images only)."""
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    run = {"methods": methods, "keeps": (0.25,), "seed": 0, "model": tmp_path}
    run["benchmarks"] = [("pope", pope_shapes)]
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        return run_comparison(**run, batch_size=3, output=None), run_comparison(**run, batch_size=1, output=None)


def _length_of(shape, gflops):
    """The sequence length whose prefill costs ``gflops`` (the cost grows with the length: one match)."""
    (length,) = [n for n in range(1, 4096) if prefill_flops(shape, n) / 1e9 == pytest.approx(gflops, rel=1e-12)]
    return length


def test_a_batch_across_two_benchmarks_gives_what_one_sample_at_a_time_gives(model_dir, pope_shapes):
    """With 3 scene questions and batches of 4, one batch holds the last scene and the first POPE question."""
    run = {"keeps": (0.5,), "limit": 3, "model": model_dir, "benchmarks": ["scenes", ("pope", pope_shapes)]}
    batched = run_comparison("zspa", **run, batch_size=4, output=None)
    one = run_comparison("zspa", **run, batch_size=1, output=None)
    assert [b.name for b in batched.benchmarks] == ["scenes", "pope"] and batched.computed == 2 * 3 * 2
    assert _predictions(batched) == _predictions(one)


def test_reused_records_are_scored_against_the_data_as_loaded_now(model_dir, pope_shapes, tmp_path):
    """A local copy whose answers changed: the predictions are reused (same key), the scores are not stale."""
    import shutil

    datasets = pytest.importorskip("datasets")
    copy = tmp_path / "pope"
    shutil.copytree(pope_shapes, copy)
    run = {"keeps": (0.5,), "limit": 4, "model": model_dir, "benchmarks": [("pope", str(copy))]}
    first = run_comparison("zspa", **run, output=tmp_path / "records")
    (parquet,) = copy.rglob("*.parquet")
    table = datasets.Dataset.from_parquet(str(parquet))
    flipped = table.map(lambda row: {"answer": "no" if row["answer"] == "yes" else "yes"})
    flipped.to_parquet(str(parquet))
    second = run_comparison("zspa", **run, output=tmp_path / "records")
    assert second.computed == 0 and second.reused == len(first.records)
    for key, record in first.records.items():
        again = second.records[key]
        assert again["prediction"] == record["prediction"] and again["pope"][1] == 1 - record["pope"][1]


def test_one_benchmark_from_two_sources_is_refused(model_dir, pope_shapes, tmp_path):
    """Results are keyed by benchmark name: two copies would mix (the second overwrote the first)."""
    with pytest.raises(InputError, match=r"benchmark 'pope' given 2 times"):
        run_comparison("zspa", model=model_dir, benchmarks=[("pope", pope_shapes), ("pope", str(tmp_path))])
    run = {"keeps": (0.5,), "limit": 2, "model": model_dir, "output": None}
    once = run_comparison("zspa", benchmarks=[("pope", pope_shapes), ("pope", pope_shapes)], **run)  # the same: one
    assert [b.name for b in once.benchmarks] == ["pope"]


def test_llava_next_runs_every_kind_of_method_and_does_not_depend_on_the_batch_size(tmp_path, pope_shapes):
    """LLaVA-NeXT (anyres tiles, newline tokens) under the same harness: pre-LM, inside-LM and CLS-attention
    methods, with its real processor, on images of six shapes, so rows of a batch hold different counts."""
    from tokenprune.testing.models import llava_next_image_tokens, tiny_llava_next, tiny_llava_next_processor

    model = tiny_llava_next(seed=0)
    model.save_pretrained(tmp_path / "model")
    tiny_llava_next_processor(model, full_vocab=True).save_pretrained(tmp_path / "model")

    run = {"methods": "zspa,fastv:layer=1,fastervlm", "keeps": (0.25,), "seed": 0, "model": tmp_path / "model"}
    run["benchmarks"] = [("pope", pope_shapes)]
    batched = run_comparison(**run, batch_size=3, output=None)
    one = run_comparison(**run, batch_size=1, output=None)
    tokens = [llava_next_image_tokens(model, height, width)[0] for width, height in SIZES]  # newlines included
    _check_family_run(batched, one, tokens, positions="contiguous", model=model)


def test_llava_onevision_runs_under_the_same_harness_and_batch_size_changes_nothing(tmp_path, pope_shapes):
    """LLaVA-OneVision (anyres grids shrunk by interpolation, newline tokens, SigLIP) with its real processor,
    whose token counts must match the model's packing, on images of six shapes."""
    from PIL import Image

    from tokenprune.testing.models import tiny_llava_onevision, tiny_llava_onevision_processor

    model = tiny_llava_onevision(seed=0)
    processor = tiny_llava_onevision_processor(model, full_vocab=True)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    run = {"methods": "zspa,divprune,fastv:layer=1", "keeps": (0.25,), "seed": 0, "model": tmp_path}
    run["benchmarks"] = [("pope", pope_shapes)]
    with pytest.warns(RuntimeWarning, match="LlavaOnevisionProcessor for images only"):  # no video processor saved
        batched = run_comparison(**run, batch_size=3, output=None)
        one = run_comparison(**run, batch_size=1, output=None)
    pixels = processor.image_processor(images=[Image.new("RGB", size) for size in SIZES], return_tensors="pt")
    with torch.no_grad():
        features = model.model.get_image_features(pixels["pixel_values"], pixels["image_sizes"]).pooler_output
    _check_family_run(batched, one, [f.shape[0] for f in features], positions="contiguous", model=model)


def test_gemma3_runs_under_the_same_harness_with_its_real_processor(tmp_path, pope_shapes):
    """Gemma 3 with its real processor (its token_type_ids mark the bidirectional image blocks): batch size changes
    no prediction, and every image is its 16 pooled tokens."""
    from tokenprune.testing.models import tiny_gemma3, tiny_gemma3_processor

    model = tiny_gemma3(seed=0)
    model.save_pretrained(tmp_path)
    tiny_gemma3_processor(model, full_vocab=True).save_pretrained(tmp_path)
    run = {"methods": "zspa,divprune", "keeps": (0.25,), "seed": 0, "model": tmp_path}
    run["benchmarks"] = [("pope", pope_shapes)]
    batched = run_comparison(**run, batch_size=3, output=None)
    one = run_comparison(**run, batch_size=1, output=None)
    assert _predictions(batched) == _predictions(one)
    (bench,) = batched.benchmarks
    configs = [config for config in batched.configs if config.method.name != "none"]
    records = [record for config in configs for record in batched.records_for(config, bench)]
    assert len(records) == 2 * 6 and all(r["visual_before"] == 16 and r["visual_after"] == 4 for r in records)


def test_internvl_runs_under_the_same_harness_with_its_real_processor(tmp_path, pope_shapes):
    """InternVL with its real processor (an image cut into 1 to 4 tiles by its aspect ratio, and a thumbnail): batch
    size changes no prediction; each image is all its tiles' tokens."""
    from PIL import Image

    from tokenprune.testing.models import tiny_internvl, tiny_internvl_processor

    model = tiny_internvl(seed=0)
    processor = tiny_internvl_processor(model, full_vocab=True)
    batched, one = _run_saved(tmp_path, pope_shapes, model, processor)
    tiles = processor.image_processor(images=[Image.new("RGB", size) for size in SIZES])["num_patches"]
    assert len(set(tiles)) > 1
    _check_family_run(batched, one, [16 * int(n) for n in tiles], positions="contiguous", model=model)


@pytest.mark.parametrize("smolvlm", [False, True], ids=["idefics3", "smolvlm"])
def test_idefics3_runs_under_the_same_harness_with_its_real_processor(tmp_path, pope_shapes, smolvlm):
    """Idefics3 with its real processor (an image cut into a grid of tiles written apart, and a global tile), and
    SmolVLM, which reads the same prompts: batch size changes no prediction; each image is all its tiles' tokens."""
    from PIL import Image

    from tokenprune.integrations import get_adapter
    from tokenprune.testing.models import tiny_idefics3, tiny_idefics3_processor

    model = tiny_idefics3(seed=0, smolvlm=smolvlm)
    processor = tiny_idefics3_processor(model, full_vocab=True)
    batched, one = _run_saved(tmp_path, pope_shapes, model, processor)
    tokens = [
        get_adapter(model).image_token_counts(
            processor(text=["<image>"], images=[[Image.new("RGB", size)]], return_tensors="pt")
        )[0]
        for size in SIZES
    ]
    assert tokens == [48, 80, 80, 48, 80, 80]  # 56 px tiles: a 1 x 2 or 2 x 2 grid, and the global tile
    _check_family_run(batched, one, tokens, positions="contiguous", model=model)


def test_glm4v_runs_under_the_same_harness_with_its_real_processor(tmp_path, pope_shapes):
    """GLM-4.1V (dynamic resolution, 3-D M-RoPE, mm_token_type_ids from its processor), for images only without
    torchvision: batch size changes no prediction, kept tokens keep their original positions."""
    from PIL import Image

    from tokenprune.testing.models import tiny_glm4v, tiny_glm4v_processor

    model = tiny_glm4v(seed=0)
    processor = tiny_glm4v_processor(model, full_vocab=True)
    batched, one = _run_saved(tmp_path, pope_shapes, model, processor)
    grids = processor.image_processor(images=[Image.new("RGB", size) for size in SIZES])["image_grid_thw"]
    _check_family_run(batched, one, [int(grid.prod()) // 4 for grid in grids], positions="original", model=model)


@pytest.mark.parametrize("family", ["qwen2.5-vl", "qwen2-vl", "qwen3-vl"])
def test_qwen_runs_under_the_same_harness_and_batch_size_changes_nothing(tmp_path, pope_shapes, family):
    """Qwen2.5-VL and Qwen2-VL (dynamic resolution, 3-D M-RoPE) with their real processor's chat template and
    image processor, on images of six shapes. The checkpoint names a video processor, which needs torchvision;
    without it the processor loads for images only, with a warning."""
    from PIL import Image

    from tokenprune.testing.models import tiny_qwen2_5_vl, tiny_qwen2_5_vl_processor, tiny_qwen2_vl, tiny_qwen3_vl

    build = {"qwen2.5-vl": tiny_qwen2_5_vl, "qwen2-vl": tiny_qwen2_vl, "qwen3-vl": tiny_qwen3_vl}[family]
    model = build(seed=0, layers=3) if family == "qwen3-vl" else build(seed=0)
    processor = tiny_qwen2_5_vl_processor(model, full_vocab=True)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    video = {"video_processor_type": "Qwen2VLVideoProcessor", "processor_class": type(processor).__name__}
    (tmp_path / "video_preprocessor_config.json").write_text(json.dumps(video))  # as the hub's checkpoints have
    methods = "zspa,divprune" if family == "qwen3-vl" else "zspa,divprune,fastv:layer=1"  # DeepStack: fastv >= 2
    run = {"methods": methods, "keeps": (0.25,), "seed": 0, "model": tmp_path}
    run["benchmarks"] = [("pope", pope_shapes)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batched = run_comparison(**run, batch_size=3, output=None)
        one = run_comparison(**run, batch_size=1, output=None)
    if importlib.util.find_spec("torchvision") is None:
        assert any("for images only" in str(w.message) for w in caught if w.category is RuntimeWarning)
    grids = processor.image_processor(images=[Image.new("RGB", size) for size in SIZES])["image_grid_thw"]
    _check_family_run(batched, one, [int(grid.prod()) // 4 for grid in grids], positions="original", model=model)


@pytest.mark.skipif(importlib.util.find_spec("torchvision") is not None, reason="the video processor loads")
def test_a_processor_whose_video_part_cannot_load_loads_for_images_only(tmp_path):
    from tokenprune.evaluation.runner import load_processor
    from tokenprune.testing.models import tiny_qwen2_5_vl, tiny_qwen2_5_vl_processor, tiny_tokenizer

    model = tiny_qwen2_5_vl(seed=0)
    model.save_pretrained(tmp_path / "qwen")
    tiny_qwen2_5_vl_processor(model).save_pretrained(tmp_path / "qwen")
    with pytest.warns(RuntimeWarning, match=r"video processor did not load .* Qwen2_5_VLProcessor for images only"):
        processor = load_processor(str(tmp_path / "qwen"))
    assert type(processor).__name__ == "Qwen2_5_VLProcessor" and not hasattr(processor, "video_processor")
    assert processor.image_token_id == model.config.image_token_id and processor.chat_template

    # a failure that is not the video processor's is the caller's error, as transformers raised it
    llava = tiny_llava(seed=0)
    llava.save_pretrained(tmp_path / "llava")
    tiny_tokenizer().save_pretrained(tmp_path / "llava")  # a tokenizer, no image processor
    with pytest.raises(OSError, match=r"image processor|preprocessor_config"):
        load_processor(str(tmp_path / "llava"))
