"""The documentation (user guide, examples, API reference from the docstrings) builds without warnings."""

import pathlib
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).parents[1] / "docs"


def test_sphinx_builds_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("numpydoc")
    pytest.importorskip("myst_parser")
    result = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS), str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    api = (tmp_path / "generated" / "sktransfer.FineTuneClassifier.html").read_text()
    assert "reg_lambda" in api and "checkpoint_dir" in api  # parameters rendered from the docstring


def test_every_example_is_listed_in_the_docs():
    listed = (DOCS / "examples.md").read_text()
    for path in (DOCS.parent / "examples").glob("*.py"):
        assert f"`{path.name}`" in listed, path.name


def test_figures_the_guide_shows_are_made_by_an_example():
    guide = (DOCS / "user_guide.md").read_text()
    sources = " ".join(p.read_text() for p in (DOCS.parent / "examples").glob("*.py"))
    for name in ("choose_layer.png", "finetune_curves.png", "grid_freeze_lambda.png", "fusion.png"):
        assert f"figures/{name}" in guide and f'"{name}"' in sources
        assert (DOCS / "figures" / name).exists(), f"run the example that writes {name}"
