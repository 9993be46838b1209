"""``tokenprune compare`` on the command line, before any model runs: usage errors and the missing default model."""

import pytest

from tokenprune.cli import main
from tokenprune.evaluation import runner


def run_cli(capsys, *argv):
    code = main(["compare", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--methods", "zpsa"], "unknown method 'zpsa'. Did you mean 'zspa'? Available: "),
        (
            ["--methods", "zspa:ratio=0.1"],
            "no parameter 'ratio'. Did you mean 'core_ratio'? Valid parameters: core_ratio=0.2",
        ),
        (["--methods", "zspa,ratio=0.1"], "method 'zspa' has no parameter 'ratio'"),
        (["--methods", "core_ratio=0.1"], "comes before any method"),
        (["--methods", "zspa,attention"], "method 'attention' ranks tokens by scores passed by the caller"),
        (["--benchmark", "popee"], "unknown benchmark 'popee'. Did you mean 'pope'? Available: ai2d, chartqa, gqa, "),
        (["--benchmark", "scenes,nope"], "Available: ai2d, chartqa, gqa, mmmu, pope, scenes, textvqa"),
        (["--keep", "0.1,2"], "keep ratios must be numbers in (0, 1]"),
        (["--batch-size", "0"], "expected an integer >= 1; got '0'"),
        (["--device", "tpu"], "expected auto, cpu, cuda or cuda:N; got 'tpu'"),
        (["--limit", "x"], "expected an integer >= 1; got 'x'"),
        (["--positions", "grid"], "argument --positions: invalid choice: 'grid'"),
        (["--methods", "fastv", "--positions", "contiguous"], "'fastv' prunes inside the language model"),
        (["--methods", "zspa:positions=kept"], "positions of 'zspa' must be one of ['contiguous', 'original']"),
        (["--json", "."], "--json . is a directory; expected a file path"),
        (["--benchmark", "pope=/a,pope=/b"], "benchmark 'pope' given 2 times (/a, /b)"),
        (["--markdown", "."], "--markdown . is a directory; expected a file path"),
        (["--json", "-", "--markdown", "-"], "both write to stdout"),
    ],
)
def test_usage_errors_exit_2_with_one_line_naming_what_exists(capsys, argv, expected):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and out == ""
    assert expected in err
    if not err.startswith("usage:"):  # our own errors (argparse prints its usage line first)
        assert len(err.splitlines()) == 1 and err.startswith("tokenprune: error: ")


def test_without_the_shipped_model_it_says_how_to_point_at_a_model_and_data(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(runner, "default_model_path", lambda: tmp_path / "scene-llava")
    code, out, err = run_cli(capsys, "--limit", "2", "--output", str(tmp_path / "records"))
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1
    assert f"the shipped model is not installed: expected a save_pretrained directory at {tmp_path}" in err
    assert "--model HF_ID_OR_PATH" in err and "--benchmark" in err


@pytest.mark.skipif(
    not (runner.default_model_path() / "config.json").is_file(), reason="the shipped model is not installed"
)
def test_the_default_path_runs_offline_on_the_shipped_model(capsys, tmp_path):
    code, out, err = run_cli(capsys, "--limit", "6", "--keep", "0.1", "--output", str(tmp_path))
    assert code == 0, err
    assert "none" in out and "zspa" in out and "divprune" in out and "existence (1)" in out
