"""Every example runs, in a fast mode, as part of the suite."""

import os
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, tmp_path):
    env = dict(os.environ, SKTRANSFER_FAST="1", MPLBACKEND="Agg", SKTRANSFER_OUTPUT=str(tmp_path))
    result = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy" in result.stdout
    if "savefig" in path.read_text():
        assert list(tmp_path.glob("*.png")), "the example should write its figure to $SKTRANSFER_OUTPUT"
