"""Every notebook script runs top to bottom."""
import pathlib
import subprocess
import sys

import pytest

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(notebook, tmp_path):
    done = subprocess.run([sys.executable, str(notebook), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert any(tmp_path.iterdir()), "the notebook wrote nothing"


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no study"
