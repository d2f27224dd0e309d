"""`hwlab sweep`: the spec's checks, the points, identical results on a process pool and a Dask
LocalCluster, resuming an interrupted sweep, and bad input (one line, exit status 2)."""
import json
import pathlib
import re
import socket
import time

import pytest

from cli_runner import one_error_line
from hwlab.sweep import SweepError, check_spec, evaluate, finished, grid, load_spec, point_key, run_sweep

SPEC = """
formats = ["int4", "mxfp4"]
group_sizes = [32, 128]
hardware = ["bitmod", "a77"]

[[workloads]]
model = "opt-1.3b"
context = 128
"""
POINTS = 2 * 2 * 2


def write(folder: pathlib.Path, text: str, name: str = "spec.toml") -> pathlib.Path:
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture
def spec(tmp_path):
    return load_spec(write(tmp_path, SPEC))


# ---- the spec --------------------------------------------------------------------------------

def test_spec_fills_workload_defaults_and_grid_covers_every_combination(spec):
    assert spec["workloads"] == [{"model": "opt-1.3b", "phase": "decode", "batch": 1, "context": 128}]
    points = grid(spec)
    assert len(points) == POINTS and len({point_key(p) for p in points}) == POINTS
    assert points[0] == {"format": "int4", "group_size": 32, "hardware": "bitmod", "workload": spec["workloads"][0],
                         "weights": "sample"}


@pytest.mark.parametrize("text, match", [
    ('formats = ["int4"]\ngroup_sizes = [64]\nhardware = ["bitmod"]\nworkloads = [{model = "opt-1.3b"}]\ncolour = 1',
     "unknown key 'colour'"),
    ('formats = ["int4"]\ngroup_sizes = [64]\nhardware = ["bitmod"]', "missing key 'workloads'"),
    ('formats = "int4"\ngroup_sizes = [64]\nhardware = ["bitmod"]\nworkloads = [{model = "opt-1.3b"}]',
     "formats must be a non-empty list of names"),
    ('formats = ["int4"]\ngroup_sizes = [-64]\nhardware = ["bitmod"]\nworkloads = [{model = "opt-1.3b"}]',
     "group_sizes must be a non-empty list of positive integers"),
    ('formats = ["int4"]\ngroup_sizes = [64, 64]\nhardware = ["bitmod"]\nworkloads = [{model = "opt-1.3b"}]',
     "group_sizes lists 64 twice"),
    ('formats = ["int44"]\ngroup_sizes = [64]\nhardware = ["bitmod"]\nworkloads = [{model = "opt-1.3b"}]',
     "formats: unknown format 'int44'"),
    ('formats = ["int4"]\ngroup_sizes = [64]\nhardware = ["tpu"]\nworkloads = [{model = "opt-1.3b"}]',
     "hardware: unknown machine 'tpu'"),
    ('formats = ["int4"]\ngroup_sizes = [64]\nhardware = ["missing.toml"]\nworkloads = [{model = "opt-1.3b"}]',
     "missing.toml: no such configuration file"),
    ('formats = ["int4"]\ngroup_sizes = [64]\nhardware = ["bitmod"]\nworkloads = [{model = "gpt-9"}]',
     r"workloads\[0\]: unknown model 'gpt-9'"),
    ('formats = ["int4"]\ngroup_sizes = [64]\nhardware = ["bitmod"]\nworkloads = [{model = "opt-1.3b", batch = 0}]',
     r"workloads\[0\]: batch must be a positive integer"),
    ('formats = ["int4"]\ngroup_sizes = [64]\nhardware = ["bitmod"]\nworkloads = [{model = "opt-1.3b", tokens = 3}]',
     r"workloads\[0\]: unknown key 'tokens'"),
    ('formats = ["int4"]\ngroup_sizes = [64]\nhardware = ["bitmod"]\nworkloads = [{model = "opt-1.3b"}]\n'
     'weights = "nope.npz"', "weights: no such file"),
    ('formats = ["int4"\n', "is not valid TOML"),
])
def test_bad_specs_are_refused_naming_the_key(tmp_path, text, match):
    with pytest.raises(SweepError, match=match):
        load_spec(write(tmp_path, text))


def test_a_machine_toml_beside_the_spec_is_an_accelerator_or_an_edge_core(tmp_path):
    write(tmp_path, 'preset = "bitmod"\nrows_decode = 32\n', "small.toml")
    write(tmp_path, 'preset = "a72"\nclock_ghz = 2.0\n', "fast_pi.toml")
    spec = check_spec({"formats": ["int4"], "group_sizes": [64], "hardware": ["small.toml", "fast_pi.toml"],
                       "workloads": [{"model": "opt-1.3b"}]}, tmp_path / "spec.toml")
    results = [evaluate(p, spec["base"]) for p in grid(spec)]
    assert [r["status"] for r in results] == ["ok", "ok"]
    assert results[1]["runs"][0]["kernel"] == "w4a8" and results[1]["runs"][0]["machine"] == "a72"


# ---- points ----------------------------------------------------------------------------------

def test_evaluate_gives_bits_error_and_cycles_or_the_reason_it_does_not_apply(spec):
    by = {(p["format"], p["group_size"], p["hardware"]): evaluate(p, spec["base"]) for p in grid(spec)}
    ok = by[("int4", 128, "bitmod")]
    assert ok["status"] == "ok" and ok["bits_per_weight"] == pytest.approx(4.125)
    assert ok["runs"][0]["cycles"] > 0 and ok["runs"][0]["speedup_over_fp16"] > 1
    assert by[("mxfp4", 128, "bitmod")] == {"status": "not applicable",
                                            "reason": "mxfp4 uses blocks of 32 elements along K: group_size must be 32, "
                                                      "got 128"}
    assert by[("mxfp4", 32, "a77")]["reason"] == "the edge TRIP kernels take int4 or int8 weights only"
    assert evaluate(grid(spec)[0], spec["base"]) == by[("int4", 32, "bitmod")]  # a pure function of the point


# ---- running, executors, resuming ------------------------------------------------------------

@pytest.mark.slow
def test_local_pool_and_dask_local_cluster_write_identical_results(spec, tmp_path):
    pytest.importorskip("distributed", reason='--dask needs dask.distributed (pip install "hwlab[dask]")')
    local = run_sweep(spec, tmp_path / "local.jsonl", workers=2, progress=False)
    dask = run_sweep(spec, tmp_path / "dask.jsonl", dask="local", workers=2, progress=False)
    assert local["computed"] == dask["computed"] == POINTS
    text = (tmp_path / "local.jsonl").read_bytes()
    assert text == (tmp_path / "dask.jsonl").read_bytes()
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["point"] for line in lines] == grid(spec)  # grid order, whatever order the points finished in
    assert not (tmp_path / "local.jsonl.partial").exists()


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_recomputing_finished_points(spec, tmp_path):
    complete = tmp_path / "complete.jsonl"
    run_sweep(spec, complete, workers=2, progress=False)
    lines = complete.read_text().splitlines(keepends=True)
    out = tmp_path / "resumed.jsonl"
    partial = tmp_path / "resumed.jsonl.partial"  # three points finished, the fourth cut off mid-line
    partial.write_text(lines[5] + lines[0] + lines[3] + lines[1][:40])
    assert len(finished(partial)) == 3 and partial.read_text() == lines[5] + lines[0] + lines[3]
    assert not out.exists()  # until every point is done, nothing looks complete
    summary = run_sweep(spec, out, workers=2, progress=False)
    assert summary["resumed"] == 3 and summary["computed"] == POINTS - 3
    assert out.read_bytes() == complete.read_bytes() and not partial.exists()


def test_a_partial_file_that_mixes_runs_is_refused_not_merged(spec, tmp_path):
    complete = tmp_path / "complete.jsonl"
    run_sweep(spec, complete, workers=1, progress=False)
    lines = complete.read_text().splitlines(keepends=True)
    partial = tmp_path / "mixed.jsonl.partial"
    other = lines[0].replace('"code_bits": 4', '"code_bits": 5')  # the same point, another result
    assert other != lines[0]
    partial.write_text(lines[0] + lines[1] + other)
    with pytest.raises(SweepError, match="line 3 repeats a point with a different result"):
        finished(partial)
    record = json.loads(lines[2])
    record["point"]["group_size"] = 64  # a result filed under another point's key
    partial.write_text(lines[0] + json.dumps(record) + "\n")
    with pytest.raises(SweepError, match="line 2 is a result whose key does not match its point"):
        run_sweep(spec, tmp_path / "mixed.jsonl", workers=1, progress=False)
    assert not (tmp_path / "mixed.jsonl").exists()
    partial.write_text(lines[0] + lines[0])  # the same line twice (two runs appending): harmless
    assert len(finished(partial)) == 1


def test_a_last_line_without_its_newline_is_recomputed_not_glued_to_the_next(spec, tmp_path):
    complete = tmp_path / "complete.jsonl"
    run_sweep(spec, complete, workers=1, progress=False)
    lines = complete.read_text().splitlines(keepends=True)
    partial = tmp_path / "cut.jsonl.partial"
    partial.write_text(lines[0] + lines[1].rstrip("\n"))  # valid JSON, cut just before its newline
    assert list(finished(partial)) == [json.loads(lines[0])["key"]] and partial.read_text() == lines[0]
    partial.unlink()
    partial.mkdir()
    with pytest.raises(SweepError, match="is not a file; remove it"):
        run_sweep(spec, tmp_path / "cut.jsonl", workers=1, progress=False)


def test_a_resume_after_the_weights_file_changed_is_refused_not_mixed(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    np.save(tmp_path / "w.npy", (rng.standard_normal((16, 128)) * 0.02).astype(np.float32))
    spec = load_spec(write(tmp_path, 'formats = ["int4", "nf4"]\ngroup_sizes = [64]\nhardware = ["bitmod"]\n'
                                     'weights = "w.npy"\n[[workloads]]\nmodel = "opt-1.3b"\ncontext = 128\n'))
    complete = tmp_path / "complete.jsonl"
    run_sweep(spec, complete, workers=1, progress=False)
    partial = tmp_path / "resumed.jsonl.partial"
    partial.write_text(complete.read_text().splitlines(keepends=True)[0])  # int4 done, then interrupted
    np.save(tmp_path / "w.npy", (rng.standard_normal((16, 128)) * 0.5).astype(np.float32))  # new weights
    with pytest.raises(SweepError, match="line 1 was computed from other weights"):
        run_sweep(spec, tmp_path / "resumed.jsonl", workers=1, progress=False)
    assert not (tmp_path / "resumed.jsonl").exists()


def test_a_finished_sweep_needs_force_to_be_replaced(spec, tmp_path):
    out = tmp_path / "done.jsonl"
    out.write_text("")
    with pytest.raises(SweepError, match="exists .*pass --force"):
        run_sweep(spec, out)


def test_an_unreachable_dask_scheduler_is_one_line_within_seconds(tmp_path, capsys):
    pytest.importorskip("distributed", reason='--dask needs dask.distributed (pip install "hwlab[dask]")')
    spec = write(tmp_path, SPEC)
    started = time.monotonic()
    err = one_error_line(capsys, "sweep", str(spec), "--out", str(tmp_path / "r.jsonl"), "--dask",
                         "tcp://127.0.0.1:9")
    assert "cannot reach a Dask scheduler" in err and time.monotonic() - started < 30
    assert not list(tmp_path.glob("r.jsonl*"))  # nothing written


def test_a_peer_that_never_answers_is_one_line_too(tmp_path, capsys):
    pytest.importorskip("distributed", reason='--dask needs dask.distributed (pip install "hwlab[dask]")')
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never speaks
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        started = time.monotonic()
        err = one_error_line(capsys, "sweep", str(write(tmp_path, SPEC)), "--out", str(tmp_path / "r.jsonl"),
                             "--dask", f"tcp://127.0.0.1:{silent.getsockname()[1]}")
    assert "cannot reach a Dask scheduler" in err and time.monotonic() - started < 30


@pytest.mark.parametrize("args, match", [
    (["nosuch.toml"], "nosuch.toml: no such file"),
    (["{spec}", "--out", "{tmp}/r.csv"], "name the file \\*.jsonl"),
    (["{spec}", "--out", "{tmp}"], "is a directory"),
    (["{spec}", "--workers", "0"], "--workers must be a positive number"),
])
def test_bad_command_lines_are_one_line(tmp_path, capsys, args, match):
    spec = write(tmp_path, SPEC)
    argv = [a.format(spec=spec, tmp=tmp_path) for a in args]
    assert re.search(match, one_error_line(capsys, "sweep", *argv))
