"""tools/mutation_check.py: snippets must apply exactly once, a planted bug is caught or missed,
and the working tree is never modified."""

from __future__ import annotations

import importlib.util
import queue
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "mutation_check.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("mutation_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_the_list_is_large_unique_and_readable(tool):
    mutations = tool.MUTATIONS
    assert len(mutations) >= 35
    assert len({m.id for m in mutations}) == len(mutations)
    for m in mutations:
        assert m.file.startswith("lmseg/") and m.tests and all(t.startswith("tests/") for t in m.tests)
        assert m.snippet != m.replacement and m.description and "\n" not in m.description


def test_snippets_found_other_than_once_are_reported(tool, tmp_path):
    (tmp_path / "lmseg").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "lmseg" / "a.py").write_text("x = 1\ny = 1\n")
    (tmp_path / "tests" / "test_a.py").write_text("")
    M = tool.Mutation
    problems = tool.check_snippets(
        [
            M("ok", "lmseg/a.py", "x = 1", "x = 2", "d", ("tests/test_a.py",)),
            M("twice", "lmseg/a.py", "= 1", "= 2", "d", ("tests/test_a.py",)),
            M("gone", "lmseg/a.py", "z = 1", "z = 2", "d", ("tests/test_a.py",)),
            M("nofile", "lmseg/b.py", "x", "y", "d", ("tests/test_a.py",)),
            M("notest", "lmseg/a.py", "y = 1", "y = 3", "d", ("tests/test_b.py",)),
        ],
        tmp_path,
    )
    assert [p.split(":")[0] for p in problems] == ["twice", "gone", "nofile", "notest"]
    assert "found 2 times" in problems[0] and "found 0 times" in problems[1]


@pytest.mark.slow  # two pytest subprocesses: a few seconds
def test_a_planted_bug_is_caught_and_a_harmless_change_missed(tool, tmp_path):
    (tmp_path / "pkg").mkdir()
    source = "def double(x):\n    # twice x\n    return 2 * x\n"
    (tmp_path / "pkg" / "mod.py").write_text(source)
    (tmp_path / "test_mod.py").write_text(
        "from pkg.mod import double\n\n\ndef test_double():\n    assert double(3) == 6\n"
    )
    copies: queue.Queue[Path] = queue.Queue()
    copies.put(tmp_path)
    M = tool.Mutation
    caught = tool.run_mutation(M("bug", "pkg/mod.py", "2 * x", "3 * x", "d", ("test_mod.py",)), copies, 120)
    missed = tool.run_mutation(M("comment", "pkg/mod.py", "# twice", "# two times", "d", ("test_mod.py",)), copies, 120)
    assert (caught.status, caught.caught_by) == ("caught", "test_mod.py::test_double")
    assert missed.status == "missed"
    assert (tmp_path / "pkg" / "mod.py").read_text() == source  # reverted after each run
