"""The notebooks in notebooks/: clean nbformat v4 files (no outputs committed) that run top to bottom.

Each is executed with nbclient in a python3 kernel (ipykernel), in a temporary folder, with
``HWLAB_NOTEBOOK_OUT`` pointing at it, and must write the figures it promises there and nothing in
the repository. The kernel notebook runs twice: against the committed ``bench/results`` and
against an empty results folder (it must say that there are no GPU measurements).
"""
import pathlib
import time

import pytest

ROOT = pathlib.Path(__file__).parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# what each notebook writes to HWLAB_NOTEBOOK_OUT whatever the machine (a GPU or not, results or not)
WRITES = {
    "datatype_explorer": ["datatype_value_grids.png", "datatype_error_vs_bits.png", "datatype_error_vs_bits.csv",
                          "datatype_group_size.png", "datatype_new_formats.png"],
    "accelerator_what_ifs": ["accel_presets.png", "accel_bitmod_decode_report.png", "accel_weight_bits.png",
                             "accel_array_size.png", "accel_dram_bandwidth.png", "accel_bits_x_bandwidth.png",
                             "my_accelerator.toml", "my_accelerator_prefill.csv"],
    "kernel_microbenchmarks": ["kernels_model_h200.png"],
}
MEASURED_FIGURES = ["kernels_speedup_over_fp16.png", "kernels_time_vs_bits.png", "kernels_predicted_vs_measured.png"]
TIMEOUT_S = 300  # per notebook (each takes well under a minute on two idle CPU cores)


def test_there_are_the_notebooks():
    assert sorted(p.stem for p in NOTEBOOKS) == sorted(WRITES), "notebooks/ and WRITES disagree"
    assert not list(NOTEBOOK_DIR.glob("*.py")), "studies are notebooks (.ipynb), not scripts"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_clean(path):
    import nbformat

    nb = nbformat.read(path, as_version=nbformat.NO_CONVERT)
    assert nb.nbformat == 4
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and nb.cells[0].cell_type == "markdown", "a notebook opens with a markdown cell that says what it shows"
    for i, cell in enumerate(code):
        assert cell.outputs == [] and cell.execution_count is None, f"code cell {i} of {path.name} has outputs committed"
    assert "HWLAB_NOTEBOOK_OUT" in code[0].source, "the first code cell reads the output folder"


def execute(path, cwd, timeout=TIMEOUT_S):
    """Run ``path`` top to bottom in a python3 kernel; returns (seconds, all text it printed)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on an error
    seconds = time.perf_counter() - start
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    return seconds, text


def snapshot():
    return sorted(p for folder in (NOTEBOOK_DIR, ROOT / "bench" / "results") for p in folder.rglob("*"))


def check_written(out, names):
    for name in names:
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, f"{name} not written to HWLAB_NOTEBOOK_OUT"
        if name.endswith(".png"):
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{name} is not a PNG"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("HWLAB_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("HWLAB_BENCH_RESULTS", str(ROOT / "bench" / "results"))
    before = snapshot()
    seconds, text = execute(path, tmp_path)
    assert seconds < TIMEOUT_S, f"{path.name} took {seconds:.0f} s"
    check_written(out, WRITES[path.stem])
    assert snapshot() == before, "the notebook wrote into the repository"
    if path.stem == "kernel_microbenchmarks":
        if "NO GPU MEASUREMENTS" in text:  # only when there are none to show
            assert not list((ROOT / "bench" / "results").glob("gpu_kernels*.json"))
        else:  # committed measurements, or live ones on a GPU
            check_written(out, MEASURED_FIGURES)


@pytest.mark.slow
def test_kernel_notebook_without_results_says_so(tmp_path, monkeypatch):
    out, empty = tmp_path / "out", tmp_path / "results"
    empty.mkdir()
    monkeypatch.setenv("HWLAB_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("HWLAB_BENCH_RESULTS", str(empty))
    monkeypatch.setenv("HWLAB_NOTEBOOK_LIVE", "0")  # even on a GPU: the committed-results path
    seconds, text = execute(NOTEBOOK_DIR / "kernel_microbenchmarks.ipynb", tmp_path)
    assert "NO GPU MEASUREMENTS" in text
    check_written(out, WRITES["kernel_microbenchmarks"])
    assert not any((out / name).exists() for name in MEASURED_FIGURES), "figures of measurements that do not exist"
