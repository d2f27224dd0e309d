"""Benchmark scripts run end to end on tiny shapes and write what BENCHMARKS.md quotes."""
import importlib
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


@pytest.fixture
def bench(monkeypatch):
    """Import a script of bench/ (they import each other as top-level modules)."""
    monkeypatch.syspath_prepend(BENCH)
    names = []

    def load(name):
        names.append(name)
        return importlib.import_module(name)

    yield load
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture
def bench_edge(bench):
    return bench("bench_edge")


def test_bench_edge_on_a_tiny_shape(bench_edge, tmp_path):
    out = tmp_path / "edge.json"
    result = bench_edge.main(["--shapes", "2x20x40", "--repeats", "1", "--command-repeats", "1", "--no-cli",
                              "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "edge_cpu"
    runs = result["kernels"]
    assert {(r["core"], r["kernel"]) for r in runs} == {(c, k) for c in ("a72", "a77")
                                                         for k in ("fp16", "w8a8", "w4a8", "w4a4")}
    assert all(r["bit_exact"] and r["counts_match_model"] and r["overflows"] == 0 and r["mmacs_per_s"] > 0
               for r in runs)
    assert len(result["paper_table"]) == 8 and "commands" not in result
    mix = {(r["core"], r["kernel"]): r for r in result["instruction_mix_2048x2048_decode"]}
    assert mix["a77", "w4a4"]["issued_per_16_macs"]["mul"] == 1  # one MUL .8h: 16 packed products
    assert mix["a77", "w4a8"]["issued_per_16_macs"]["sdot"] == 1  # one SDOT: 16 products
    assert len(result["what_ifs"]) == 24 and all(r["speedup"] > 0 for r in result["what_ifs"])
    assert all(k in result for k in ("cpu", "date", "commit", "numba"))


def test_bench_edge_refuses_a_bad_shape(bench_edge, capsys):
    with pytest.raises(SystemExit):
        bench_edge.main(["--shapes", "2x20", "--no-cli"])
    assert "expected MxNxK" in capsys.readouterr().err


def test_bench_load_on_a_tiny_shape(bench, tmp_path):
    pytest.importorskip("torch", reason="torch is not installed: bench_load records its version")
    out = tmp_path / "load.json"
    result = bench("bench_load").main(["--formats", "int4", "int3", "--shape", "64", "256", "--repeats", "1",
                                       "--cold-repeats", "1", "--out", str(out)])
    assert json.loads(out.read_text())["benchmark"] == "load_cpu"
    for row in result["results"]:
        assert all(row[k] > 0 for k in ("load_ms", "plain_read_ms", "ratio", "ratio_cpu"))
        assert ("ratio_cold" in row) == hasattr(os, "posix_fadvise")


def test_bench_load_against_another_revision(bench, tmp_path, capsys):
    """``--against REV`` times that revision's ``hwlab.load`` (here HEAD's) in a second process, in turns."""
    pytest.importorskip("torch", reason="torch is not installed: bench_load records its version")
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode:
        pytest.skip("not a git checkout: --against exports a revision with git archive")
    result = bench("bench_load").main(["--formats", "int4", "--shape", "16", "128", "--repeats", "3",
                                       "--cold-repeats", "0", "--against", "HEAD", "--block", "2"])
    row, = result["results"]
    assert row["against_ms"] > 0 and row["ratio_against"] > 0 and "ratio_against_cold" not in row
    assert result["against"] and result["against"] in subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    with pytest.raises(SystemExit):
        bench("bench_load").main(["--formats", "int4", "--shape", "16", "128", "--against", "no-such-revision"])
    assert "--against no-such-revision: git cannot export it" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench("bench_load").main(["--formats", "int4", "--shape", "16", "128", "--against", "HEAD", "--block", "0"])
    assert "--block must be at least 1, got 0" in capsys.readouterr().err


def test_bench_load_against_a_revision_without_package_dirs(bench, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README").write_text("no pyproject here\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "README"], ["commit", "-qm", "one"]):
        subprocess.run(git + args, check=True)
    with pytest.raises(ValueError, match="--against HEAD: no \\[tool.setuptools\\] package-dir in its pyproject.toml"):
        bench("load_worker").export_revision(str(repo), "HEAD", str(tmp_path / "out"))


def test_launch_variants_apply_and_undo_dispatch_constants(bench):
    pytest.importorskip("triton", reason="triton is not installed")
    variants = bench("gpu_launch_variants")
    from hwlab.kernels import async_mixed, dispatch

    shipped = (dispatch.HALF_TILE, dict(dispatch.STAGES), async_mixed.GEMV_BN)
    saved = {}
    variants.apply("HALF_TILE=(256, 16, 1); STAGES['tile']=3; async_mixed.GEMV_BN=32", saved)
    try:
        assert (dispatch.HALF_TILE, dispatch.STAGES["tile"], async_mixed.GEMV_BN) == ((256, 16, 1), 3, 32)
        variants.apply("", saved)
        assert (dispatch.HALF_TILE, dict(dispatch.STAGES), async_mixed.GEMV_BN) == shipped
    finally:
        variants.apply("", saved)
    with pytest.raises(SystemExit, match="'NO_SUCH' is not a constant of dispatch or async_mixed"):
        variants.statements("NO_SUCH=1")


def test_repredict_recomputes_the_model_and_never_overwrites(bench, tmp_path):
    pytest.importorskip("triton", reason="triton is not installed")
    gpu = bench("gpu_kernels")
    run = {"env": {"sms": 132, "gpu": "NVIDIA H200"}, "rows": [
        {"name": "hwlab_int4", "format": "int4", "M": 1, "K": 8192, "N": 28672, "bits_per_weight": 4.125,
         "predicted_us": -1.0},
        {"name": "cublas_fp16", "M": 1, "K": 8192, "N": 28672},
        {"name": "hwlab_int4", "format": "int4", "M": 16, "K": 8192, "N": 28672, "bits_per_weight": 4.125,
         "kernel": "int_mma_cupy: BN=128 BM=16"}]}
    src, dst = tmp_path / "run.json", tmp_path / "new.json"
    src.write_text(json.dumps(run))
    assert "2 rows re-predicted" in gpu.repredict(str(src), str(dst), "h200")
    rows = json.loads(dst.read_text())["rows"]
    assert rows[0]["predicted_graph_us"] > 28 and "predicted_us" not in rows[1]
    assert rows[2]["predicted"]["kernel"] == "int_mma_cupy" and rows[2]["predicted_graph_us"] > 28
    with pytest.raises(SystemExit, match="exists"):
        gpu.repredict(str(src), str(dst), "h200")


def test_repredict_takes_the_preset_of_the_gpu_the_run_was_on(bench, tmp_path):
    pytest.importorskip("triton", reason="triton is not installed")
    gpu = bench("gpu_kernels")
    row = {"name": "hwlab_int4", "format": "int4", "M": 1, "K": 8192, "N": 28672, "bits_per_weight": 4.125}
    graph = {}
    for card in ("NVIDIA H100 80GB HBM3", "NVIDIA H200"):
        src, dst = tmp_path / f"{card}.json", tmp_path / f"{card}_new.json"
        src.write_text(json.dumps({"env": {"sms": 132, "gpu": card}, "rows": [row]}))
        gpu.repredict(str(src), str(dst), "auto")
        doc = json.loads(dst.read_text())
        graph[doc["env"]["gpu_model"]] = doc["rows"][0]["predicted_graph_us"]
        assert doc["env"]["repredicted"].endswith(f"preset {doc['env']['gpu_model']}")
    assert graph["h100"] > 1.05 * graph["h200"]  # 3020 x 0.97 against 4270 x 0.74 GB/s of streaming
    src.write_text(json.dumps({"env": {"sms": 108, "gpu": "NVIDIA A100-SXM4-80GB"}, "rows": [row]}))
    with pytest.raises(SystemExit, match="no preset for the GPU 'NVIDIA A100-SXM4-80GB'; name one of"):
        gpu.repredict(str(src), str(tmp_path / "a100.json"), "auto")
    with pytest.raises(SystemExit, match="--gpu-model 'h300' is not a preset: expected auto or one of"):
        gpu.repredict(str(src), str(tmp_path / "h300.json"), "h300")
    assert gpu.model_preset("h100", "NVIDIA A100-SXM4-80GB") == "h100"  # a named preset, whatever the card
    assert gpu.model_preset("auto", "NVIDIA A100-SXM4-80GB", required=False) is None  # a run: timed, not predicted
    assert gpu.prediction(None, "int4", 1, 8192, 28672, 4.125, None) == {}
    nameless = tmp_path / "nameless.json"  # a run without the GPU's name: a named preset still works, auto cannot
    nameless.write_text(json.dumps({"env": {"sms": 132}, "rows": [row, {**row, "M": 65, "kernel": "int_mma_cupy"}]}))
    assert "1 rows re-predicted" in gpu.repredict(str(nameless), str(tmp_path / "named.json"), "h100")
    rows = json.loads((tmp_path / "named.json").read_text())["rows"]
    assert rows[0]["predicted_graph_us"] > 0 and rows[1]["predicted_error"].startswith("no launch: int_mma takes 1..64")
    with pytest.raises(SystemExit, match="no preset for the GPU None"):
        gpu.repredict(str(nameless), str(tmp_path / "auto.json"), "auto")


def test_launch_variants_refuse_what_is_not_an_assignment(bench):
    pytest.importorskip("triton", reason="triton is not installed")
    variants = bench("gpu_launch_variants")
    with pytest.raises(SystemExit, match="is not a Python assignment"):
        variants.statements("HALF_TILE=(1,")


def test_repredict_refuses_a_file_that_is_not_a_run(bench, tmp_path):
    pytest.importorskip("triton", reason="triton is not installed")
    bad = tmp_path / "bad.json"
    bad.write_text("{bad")
    with pytest.raises(SystemExit, match="is not a gpu_kernels.json run"):
        bench("gpu_kernels").repredict(str(bad), str(tmp_path / "new.json"), "h200")


def test_instruction_counts_merge_in_place_and_refuse_a_file_that_is_not_a_table(bench, tmp_path):
    counts = bench("kernel_instructions")
    old = {"rows": [{"format": "int4", "m": 1, "kernel": "gemv_words", "n": 1},
                    {"format": "int4", "m": 16, "kernel": "int_mma_cupy", "n": 1}]}
    table = tmp_path / "kernel_instructions.json"
    table.write_text(json.dumps(old))
    new = [{"format": "int4", "m": 16, "kernel": "int_mma_cupy", "n": 2},
           {"format": "nf4", "m": 16, "kernel": "int_mma_cupy", "n": 3}]
    assert [r["n"] for r in counts.merged(str(table), new)] == [1, 2, 3]  # replaced in place, then the new one
    with pytest.raises(SystemExit, match="is not a kernel_instructions.json table"):
        counts.merged(str(tmp_path / "missing.json"), new)
    sass = """
        /*0000*/                   HMMA.16816.F32 R0, R0, R0, R0 ;
        /*0010*/              @P0 BRA 0x0 ;
        /*0020*/                   NOP ;
        /*0030*/                   BRA 0x0 ;
    """
    assert counts.loop_instructions(sass) == (4, {"HMMA": 1, "BRA": 2, "NOP": 1})  # the longest loop
    assert counts.loop_instructions(sass, containing="HMMA") == (2, {"HMMA": 1, "BRA": 1})  # the shortest with it


def test_stream_probe_sums_every_row_with_every_tile(bench):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("triton", reason="triton is not installed")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("a GPU is present: stream_probe.py runs there (TRITON_INTERPRET=1 runs it on CPU tensors)")
    probe = bench("stream_probe")
    words = torch.randint(-2**31, 2**31 - 1, (37, 300), dtype=torch.int32)  # odd rows and words: the masks
    expected = words.to(torch.int64).sum(dim=1).remainder(2**32)
    for tile in probe.TILES:
        out = torch.full((37,), 7, dtype=torch.int32)
        probe.stream(words, out, tile)
        assert torch.equal(out.to(torch.int64).remainder(2**32), expected), tile


def test_stream_probe_needs_a_gpu(bench):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("triton", reason="triton is not installed")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit, match="torch.cuda.is_available\\(\\) is False"):
        bench("stream_probe").main(["--out", "."])


def test_stream_probe_refuses_an_out_that_is_not_a_directory(bench, tmp_path):
    pytest.importorskip("triton", reason="triton is not installed")
    with pytest.raises(SystemExit, match="--out .* is not a directory"):
        bench("stream_probe").main(["--out", str(tmp_path / "missing")])


def test_instruction_count_of_a_launch_under_the_register_cap():
    """``bench/kernel_instructions.py`` compiles a launch that carries Triton's ``maxnreg`` (int2's GEMV,
    ``dispatch.GEMV_MAX_REGISTERS``) as a compile option, and the cubin it counts holds the cap (compiled for sm_90
    in a process without the interpreter)."""
    pytest.importorskip("triton", reason="triton is not installed")
    from hwlab.kernels import dispatch

    script = "import json, kernel_instructions as k; print(json.dumps(k.count(['int2'], (1,))))"
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], cwd=BENCH, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = json.loads(done.stdout.splitlines()[-1])
    assert row["kernel"] == "gemv_words" and 0 < row["registers"] <= dispatch.GEMV_MAX_REGISTERS[2]


def test_instruction_counts_of_launch_variants_beside_their_predictions(tmp_path):
    """``kernel_instructions.py --variant`` counts the launch under other dispatch constants (the one-row tile's
    register cap here) and predicts each from its own counts; the table is not touched, and the variants' file is
    a new one (compiled for sm_90 in a process without the interpreter)."""
    pytest.importorskip("triton", reason="triton is not installed")
    out = tmp_path / "variants.json"
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "kernel_instructions.py", "--formats", "int3", "--batches", "1",
                           "--variant", "", "--variant", "TILE_MAX_REGISTERS={3: 128}", "--out", str(out)],
                          cwd=BENCH, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    shipped, capped = json.loads(out.read_text())["rows"]
    assert (shipped["variant"], capped["variant"]) == ("", "TILE_MAX_REGISTERS={3: 128}")
    assert shipped["kernel"] == capped["kernel"] == "tile" and capped["registers"] <= 128 < shipped["registers"]
    assert capped["warps_per_sm"] > shipped["warps_per_sm"] and shipped["predicted_graph_us"] > 0
    assert "(shipped)" in done.stdout and "predicted us" in done.stdout


def test_instruction_count_variants_refuse_to_touch_the_table(bench, tmp_path):
    pytest.importorskip("triton", reason="triton is not installed")
    counts = bench("kernel_instructions")
    taken = tmp_path / "taken.json"
    taken.write_text("{}")
    with pytest.raises(SystemExit, match="--out .*taken.json exists"):
        counts.main(["--variant", "", "--out", str(taken)])
    with pytest.raises(SystemExit, match="no --merge or --kernels"):
        counts.main(["--variant", "", "--merge"])
    with pytest.raises(SystemExit, match="--gpu-model: unknown GPU preset 'a100'"):
        counts.main(["--variant", "", "--gpu-model", "a100"])
    assert taken.read_text() == "{}"
