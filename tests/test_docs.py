"""Every ```python block of the block, getting-started, model and weights pages runs offline on CPU.

The blocks of one page run in order in one namespace (a later block may use an earlier one's
names). A block preceded by a ``<!-- no-test -->`` line is skipped (snippets that need released weights).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = [
    DOCS / "getting-started.md",
    DOCS / "model.md",
    DOCS / "weights.md",
    *sorted((DOCS / "blocks").glob("*.md")),
]

_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_SKIP = "<!-- no-test -->"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """``(line, code)`` for every ```python block not marked with ``<!-- no-test -->``."""
    blocks = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").splitlines()
        if before and before[-1].strip() == _SKIP:
            continue
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return blocks


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(DOCS)))
def test_page_snippets_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page's blocks run in order in one namespace, as a reader would paste them."""
    blocks = python_blocks(page.read_text(encoding="utf-8"))
    assert blocks, f"{page} has no tested snippet"
    monkeypatch.chdir(tmp_path)  # snippets that write files write them here
    namespace: dict[str, object] = {"__name__": "docs_snippet"}
    for line, code in blocks:
        exec(compile(code, f"{page}:{line}", "exec"), namespace)


def test_skip_marker() -> None:
    text = "<!-- no-test -->\n```python\nraise SystemExit\n```\n\n```python\nx = 1\n```\n"
    assert python_blocks(text) == [(6, "x = 1\n")]


def test_variants_table_is_current() -> None:
    """docs/model.md's variants table matches the registry (regenerate: tools/make_figures.py)."""
    path = DOCS.parent / "tools" / "make_figures.py"
    spec = importlib.util.spec_from_file_location("make_figures", path)
    assert spec is not None and spec.loader is not None
    make_figures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_figures)
    page = (DOCS / "model.md").read_text(encoding="utf-8")
    assert make_figures.render_model_page(page) == page, "run python tools/make_figures.py"
