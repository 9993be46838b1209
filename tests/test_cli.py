"""The ``tokenprune`` command line: output, JSON, exit codes, errors and warnings."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tokenprune
import tokenprune.plugins
from tokenprune.cli import COMMANDS, _console, list_cmd, main
from tokenprune.errors import MethodParameterError, SelectorError, UnknownMethodError

ANSI = "\x1b["


@pytest.fixture(autouse=True)
def _wide_plain_terminal(monkeypatch):
    """Tables unwrapped (no COLUMNS override) and no colour forced from the environment."""
    for name in ("COLUMNS", "FORCE_COLOR", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert ANSI not in out and ANSI not in err, "captured output must not hold ANSI escape codes"
    return code, out, err


# --- list -------------------------------------------------------------------------------------


def test_list_table_has_every_method_with_its_parameters_and_plugin(capsys):
    code, out, err = run_cli(capsys, "list")
    assert code == 0, err
    assert err == ""
    names = tokenprune.list_methods()
    assert {"zspa", "divprune", "relevance"} <= set(names)
    rows = {line.split()[1]: line for line in out.splitlines() if len(line.split()) > 1}
    for name in names:
        spec = tokenprune.get_method_spec(name)
        assert name in rows, f"{name!r} missing from\n{out}"
        assert spec.plugin in rows[name]
        assert list_cmd.format_params(spec.params) in rows[name]
    assert "core_ratio=0.2, pooling='mean'" in rows["zspa"]


def test_list_json_matches_the_registry(capsys):
    code, out, _ = run_cli(capsys, "list", "--json")
    assert code == 0
    data = json.loads(out)
    assert [item["name"] for item in data] == tokenprune.list_methods()
    for item in data:
        spec = tokenprune.get_method_spec(item["name"])
        assert set(item) == {"name", "summary", "params", "needs", "plugin"}
        assert item["params"] == dict(spec.params)
        assert list(item["params"]) == list(spec.params)  # the factory's order
        assert (item["summary"], item["plugin"]) == (spec.summary, spec.plugin)


def test_list_says_what_each_method_needs_beyond_the_visual_tokens(capsys):
    code, out, _ = run_cli(capsys, "list", "--json")
    needs = {item["name"]: item["needs"] for item in json.loads(out)}
    assert needs["zspa"] == needs["relevance"] == ["prompt"] and needs["divprune"] == needs["stride"] == []
    assert needs["attention"] == ["scores:external"] and needs["fastervlm"] == ["scores:cls_attention"]
    assert needs["visionzip"] == ["scores:cls_attention", "merges"]
    assert needs["fastv"] == ["scores:lm_attention", "inside_lm"]
    for name, codes in needs.items():  # what the selector itself says
        selector = tokenprune.create_method(name)
        assert ("prompt" in codes) == ("prompt" in selector.requires)
        assert ("merges" in codes) == selector.merges and ("inside_lm" in codes) == (selector.prune_layer is not None)
    code, table, _ = run_cli(capsys, "list")
    rows = {line.split()[1]: line for line in table.splitlines() if len(line.split()) > 1}
    assert code == 0 and "merges tokens" in rows["visionzip"] and "caller's scores" in rows["attention"]


def test_list_json_writes_unserializable_defaults_as_repr(capsys, fresh_registry):
    def odd(limit: float = float("inf"), shape: tuple = (2, 3), marker: object = None, tag: str = "x"):
        return tokenprune.create_method("stride").selector

    tokenprune.register_method("odd-defaults", odd, summary="a method with awkward defaults")
    code, out, _ = run_cli(capsys, "list", "odd-*", "--json")
    assert code == 0
    [item] = json.loads(out)
    assert item["params"] == {"limit": "inf", "shape": [2, 3], "marker": None, "tag": "x"}
    assert item["plugin"] == "python"


@pytest.mark.parametrize("pattern", ["div*", "z*", "*e*", "relevance", "[rs]*"])
def test_list_pattern_filters(capsys, pattern):
    code, out, _ = run_cli(capsys, "list", pattern, "--json")
    assert code == 0
    assert [item["name"] for item in json.loads(out)] == tokenprune.list_methods(pattern)
    code, table, _ = run_cli(capsys, "list", pattern)
    shown = {line.split()[1] for line in table.splitlines() if len(line.split()) > 1}
    assert set(tokenprune.list_methods(pattern)) <= shown
    assert not (set(tokenprune.list_methods()) - set(tokenprune.list_methods(pattern))) & shown


def test_list_no_match_exits_1_naming_the_methods(capsys):
    code, out, err = run_cli(capsys, "list", "nothing-like-this*")
    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("tokenprune: error: no method matches 'nothing-like-this*'")
    assert all(name in err for name in tokenprune.list_methods())
    code, out, err = run_cli(capsys, "list", "nothing-like-this*", "--json")
    assert (code, json.loads(out), len(err.splitlines())) == (1, [], 1)


# --- plugins ----------------------------------------------------------------------------------


def test_plugins_lists_the_builtins_with_their_method_count(capsys):
    code, out, err = run_cli(capsys, "plugins")
    assert code == 0, err
    builtin = next(line for line in out.splitlines() if "tokenprune.methods.builtin" in line)
    count = sum(tokenprune.get_method_spec(n).plugin == "tokenprune.methods.builtin" for n in tokenprune.list_methods())
    assert "builtin" in builtin and f" {count} " in builtin and "ok" in builtin

    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0
    data = {item["name"]: item for item in json.loads(out)}
    assert [r.name for r in tokenprune.plugins.list_plugins()] == list(data)
    entry = data["tokenprune.methods.builtin"]
    assert (entry["source"], entry["status"], entry["error"]) == ("builtin", "ok", None)
    assert entry["methods"] == [
        n for n in tokenprune.list_methods() if tokenprune.get_method_spec(n).plugin == "tokenprune.methods.builtin"
    ]
    assert sum(len(item["methods"]) for item in data.values()) == len(tokenprune.list_methods())


def test_a_broken_plugin_is_one_warning_line_and_a_failed_row(capsys, add_entry_point, fresh_registry):
    add_entry_point("broken", "no_such_module_xyz")
    tokenprune.plugins.reset()
    code, out, err = run_cli(capsys, "plugins", "--json")
    assert code == 0
    assert err.splitlines() == [err.rstrip("\n")], f"expected exactly one line on stderr, got {err!r}"
    assert err.startswith("tokenprune: warning: plugin 'broken' (no_such_module_xyz) failed to load: ModuleNotFound")
    broken = next(item for item in json.loads(out) if item["name"] == "broken")
    assert broken["status"] == "failed" and "no_such_module_xyz" in broken["error"]
    assert broken["methods"] == []

    tokenprune.plugins.reset()
    code, out, err = run_cli(capsys, "plugins")
    assert code == 0 and "failed: ModuleNotFoundError" in out and "tokenprune.methods.builtin" in out


# --- the command line as a whole ---------------------------------------------------------------


@pytest.mark.parametrize("argv", [["list", "--nope"], ["frobnicate"], [], ["plugins", "extra"], ["--nope", "list"]])
def test_usage_errors_exit_2(capsys, argv):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "tokenprune" in err and "error:" in err


def test_version(capsys):
    code, out, _ = run_cli(capsys, "--version")
    assert (code, out.strip()) == (0, f"tokenprune {tokenprune.__version__}")


@pytest.mark.parametrize("module", COMMANDS, ids=lambda m: m.NAME)
def test_every_subcommand_help_has_examples(capsys, module):
    code, out, _ = run_cli(capsys, module.NAME, "--help")
    assert code == 0
    assert "examples:" in out and f"tokenprune {module.NAME}" in out


@pytest.mark.parametrize(
    ("error", "code", "expected"),
    [
        (UnknownMethodError("unknown method 'zpsa'. Did you mean 'zspa'?"), 2, "unknown method 'zpsa'. Did you"),
        (MethodParameterError("method 'zspa' has no parameter 'ratio'"), 2, "method 'zspa' has no parameter"),
        (tokenprune.BudgetError("budget=700 exceeds the 576 visual tokens"), 2, "budget=700 exceeds"),
        (SelectorError("method 'x' failed on visual=(1, 4, 2)"), 1, "method 'x' failed on"),
        (RuntimeError("boom\n  on two lines"), 1, "RuntimeError: boom on two lines (run with --debug"),
    ],
)
@pytest.mark.parametrize("debug", [[], ["--debug"]], ids=["plain", "debug"])
def test_errors_are_one_line_with_the_right_exit_code(capsys, monkeypatch, error, code, expected, debug):
    def fail(args, console):
        raise error

    monkeypatch.setattr(list_cmd, "run", fail)
    got, out, err = run_cli(capsys, *debug, "list")
    assert got == code
    assert out == ""
    last = err.splitlines()[-1]
    if debug:  # the traceback is there, so no hint to rerun with --debug
        expected = expected.removesuffix(" (run with --debug")
    assert last.startswith(f"tokenprune: error: {expected}" if code == 2 else "tokenprune: error: ")
    assert expected in last
    if debug:
        assert err.startswith("Traceback (most recent call last):")
    else:
        assert len(err.splitlines()) == 1


def test_debug_is_accepted_after_the_command(capsys, monkeypatch):
    def fail(args, console):
        raise RuntimeError("boom")

    monkeypatch.setattr(list_cmd, "run", fail)
    code, _, err = run_cli(capsys, "list", "--debug")
    assert code == 1 and "Traceback" in err and "--debug for" not in err


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_in_json_mode():
    def render(stream: io.StringIO, plain: bool) -> str:
        _console.make_console(stream, plain=plain).print("[bold red]hi[/]")
        return stream.getvalue()

    assert ANSI in render(_FakeTTY(), plain=False)
    assert ANSI not in render(_FakeTTY(), plain=True)
    assert ANSI not in render(io.StringIO(), plain=False)


# --- the installed console script ---------------------------------------------------------------


def _console_script() -> str:
    candidate = Path(sys.executable).with_name("tokenprune")
    found = str(candidate) if candidate.exists() else shutil.which("tokenprune")
    if found is None:
        pytest.skip("the tokenprune console script is not installed (pip install -e .)")
    return found


def test_installed_console_script_and_python_m(monkeypatch):
    registered = [n for n in tokenprune.list_methods() if tokenprune.get_method_spec(n).plugin != "python"]
    done = subprocess.run([_console_script(), "list", "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert ANSI not in done.stdout + done.stderr
    assert [item["name"] for item in json.loads(done.stdout)] == registered

    done = subprocess.run([sys.executable, "-m", "tokenprune", "list", "--nope"], capture_output=True, text=True)
    assert done.returncode == 2 and "unrecognized arguments: --nope" in done.stderr and done.stdout == ""
