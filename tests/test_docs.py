"""The docs cannot drift from the code: every hook and every CLI subcommand is documented, the tutorial runs.

These tests read the docs sources and call the CLI renderer in ``docs/_ext``; only the last one needs
Sphinx (it builds the site with ``-W``) and is skipped where Sphinx is not installed.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tokenprune
import tokenprune.hookspecs
from tokenprune.cli import COMMANDS, build_parser
from tokenprune.integrations.adapters import BUILTIN_ADAPTERS, FAMILIES

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _load_renderer():
    spec = importlib.util.spec_from_file_location("cli_reference", DOCS / "_ext" / "cli_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _docs_text() -> str:
    sources = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
    assert sources, f"no docs sources under {DOCS}"
    return "\n".join(p.read_text(encoding="utf-8") for p in sources)


def _hook_names() -> list[str]:
    marker = f"{tokenprune.hookspecs.PROJECT_NAME}_spec"
    return sorted(name for name, obj in vars(tokenprune.hookspecs).items() if hasattr(obj, marker))


def test_hookspecs_found():
    assert "tokenprune_register_methods" in _hook_names()


@pytest.mark.parametrize("hook", _hook_names())
def test_every_hook_is_documented(hook):
    hooks_page = (DOCS / "reference" / "hooks.md").read_text(encoding="utf-8")
    assert f"autofunction:: tokenprune.hookspecs.{hook}" in hooks_page, f"add {hook} to docs/reference/hooks.md"
    assert hook in _docs_text()


@pytest.mark.parametrize("model_class", sorted(BUILTIN_ADAPTERS))
def test_every_built_in_model_family_is_in_the_readme_table_and_the_integrations_guide(model_class):
    """A family added to the built-in adapters is also told to users: in the README's table of model classes and
    under its own name in docs/integrations.md, and among the names help texts and messages give."""
    readme = (DOCS.parent / "README.md").read_text(encoding="utf-8")
    assert f"`{model_class}`" in readme, f"add {model_class} to the README's table of model classes"
    module = BUILTIN_ADAPTERS[model_class]
    guide = (DOCS / "integrations.md").read_text(encoding="utf-8")
    family = model_class.removesuffix("ForConditionalGeneration")
    names = {
        "Llava": "LLaVA-1.5",
        "LlavaNext": "LLaVA-NeXT",
        "LlavaOnevision": "LLaVA-OneVision",
        "Qwen2_5_VL": "Qwen2.5-VL",
        "Qwen2VL": "Qwen2-VL",
        "Qwen3VL": "Qwen3-VL",
        "Glm4v": "GLM-4.1V",
        "Glm4vMoe": "GLM-4.5V",
        "InternVL": "InternVL",
        "Gemma3": "Gemma 3",
        "Idefics3": "Idefics3",
        "SmolVLM": "SmolVLM",
        "Mistral3": "Mistral 3",
    }
    assert family in names, f"{model_class} ({module}): name it for users in this test and in the docs"
    assert names[family] in guide, f"describe {names[family]} in docs/integrations.md"
    assert names[family] in FAMILIES, f"add {names[family]} to tokenprune.integrations.adapters.FAMILIES"


def test_cli_page_uses_the_renderer():
    renderer = _load_renderer()
    assert renderer.PLACEHOLDER in (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("command", [module.NAME for module in COMMANDS])
def test_every_subcommand_is_in_the_cli_reference(command):
    rendered = _load_renderer().render_cli()
    assert f"`tokenprune {command}`" in rendered
    assert f"usage: tokenprune {command}" in rendered


def test_cli_reference_lists_every_option():
    rendered = _load_renderer().render_cli()
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            if action.help == "==SUPPRESS==":
                continue
            for option in action.option_strings or [action.metavar or action.dest]:
                assert option in rendered, f"{option} of tokenprune {name} missing from the CLI reference"


DOCS_EXTRA = ("sphinx", "myst_parser", "furo")
requires_docs_extra = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in DOCS_EXTRA),
    reason="the docs extra is not installed (pip install -e '.[docs]')",
)


@requires_docs_extra
def test_sphinx_build_is_clean(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "-q", "-b", "html", str(DOCS), str(tmp_path / "html")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    cli_page = (tmp_path / "html" / "reference" / "cli.html").read_text(encoding="utf-8")
    for module in COMMANDS:
        assert f"tokenprune {module.NAME}" in cli_page
    hooks_page = (tmp_path / "html" / "reference" / "hooks.html").read_text(encoding="utf-8")
    for hook in _hook_names():
        assert f'id="tokenprune.hookspecs.{hook}"' in hooks_page


def test_the_compose_tutorial_runs(fresh_registry):
    """Its code blocks, in order, in one namespace, as a reader would paste them (their asserts included)."""
    page = DOCS / "tutorials" / "compose.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) >= 6, f"expected the tutorial's code blocks in {page}"
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page.name}, block {i}", "exec"), namespace)
    assert "relevance-stride" in tokenprune.list_methods()
