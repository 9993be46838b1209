"""Sphinx configuration for the tokenprune docs.

Build (offline; no intersphinx, no network)::

    pip install -e ".[docs]"
    sphinx-build -W -b html docs docs/_build/html
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))  # an uninstalled checkout still builds

# The reference documents what the library itself provides: third-party plugins are not loaded.
os.environ.setdefault("TOKENPRUNE_DISABLE_PLUGIN_AUTOLOAD", "1")

import tokenprune  # noqa: E402

project = "tokenprune"
author = "tokenprune developers"
copyright = "tokenprune developers"
release = tokenprune.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "cli_reference",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "README.md", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
# Heavy or optional imports that autodoc need not execute (transformers is imported lazily anyway).
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"tokenprune {release}"
html_static_path: list[str] = []

# Offline: no intersphinx. Everything the docs link to is inside this site.

# Names re-exported at the top level are documented once, where they are defined; cross-references to
# the top-level name (``:func:`tokenprune.apply```) resolve to that entry.
REEXPORTED = {
    "tokenprune.apply": "tokenprune.integrations.apply",
    "tokenprune.PruneStats": "tokenprune.integrations.PruneStats",
    "tokenprune.PruningSession": "tokenprune.integrations.PruningSession",
}


def _resolve_reexported(app, env, node, contnode):  # type: ignore[no-untyped-def]
    target = REEXPORTED.get(node.get("reftarget", ""))
    if node.get("refdomain") != "py" or target is None:
        return None
    py = env.get_domain("py")
    return py.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], target, node, contnode)


def setup(app):  # type: ignore[no-untyped-def]
    app.connect("missing-reference", _resolve_reexported)
