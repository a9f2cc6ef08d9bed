"""Every example runs, in a fast mode, as part of the suite."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parents[1] / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(path, tmp_path):
    if path.stem == "dask_scale_out":  # dask is a test extra; without it, as tests/test_dask.py
        pytest.importorskip("distributed")
    env = dict(os.environ, SKTRANSFER_FAST="1", MPLBACKEND="Agg", SKTRANSFER_OUTPUT=str(tmp_path))
    result = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # every example reports accuracies; they must be numbers a model that learned would print
    accuracies = [float(v) for v in re.findall(r"accuracy[^0-9\n]*([01]\.\d+)", result.stdout)]
    assert accuracies, result.stdout[-2000:]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    assert max(accuracies) >= 0.6, result.stdout[-2000:]  # chance is 0.1-0.2 on these tasks
    if "savefig" in path.read_text():
        assert list(tmp_path.glob("*.png")), "the example should write its figure to $SKTRANSFER_OUTPUT"
