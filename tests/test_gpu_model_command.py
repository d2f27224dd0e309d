"""``hwlab gpu-model``: the GPU model's prediction of the launches ``matmul`` takes, from the command line."""
import dataclasses
import json
import re

import numpy as np
import pytest

import hwlab
import hwlab.formats as F
from cli_runner import one_error_line, run
from hwlab.kernels import dispatch
from hwlab.kernels.plan import build_plan
from hwlab.sim import gpu


def rows_of(capsys, *argv) -> dict:
    status, out, err = run(capsys, "gpu-model", *argv, "--json")
    assert status == 0, err
    return json.loads(out)


def test_the_rows_are_the_model_s_prediction_of_the_launch_matmul_takes(capsys):
    doc = rows_of(capsys, "--format", "int4", "nf4", "--m", "1", "16", "--shape", "8192", "28672")
    assert doc["gpu"]["name"] == "h100" and len(doc["rows"]) == 4
    for row in doc["rows"]:
        qt = F.quantize((np.random.default_rng(0).standard_normal((16, 8192)) * 0.02).astype(np.float32), row["format"])
        plan = dataclasses.replace(build_plan(qt), shape=(28672, 8192))
        if row["M"] == 16:  # fp16 x of 16 rows on a GPU with CuPy: the tensor-core kernel (run 14's rows)
            from hwlab.kernels import cupy_kernels

            launch = dispatch.mma_launch(cupy_kernels.mma_launch_plan(plan, 16, sms=132), cupy_kernels.MMA_WARPS)
        else:
            launch = dispatch.choose(plan, 1, 132)
        assert row["launch"] == launch.describe()
        p = gpu.predict("h100", row["format"], row["M"], 8192, 28672, bits_per_weight=qt.bits_per_weight, launch=launch)
        assert row["graph_us"] == pytest.approx(p.graph_us) and row["warps_per_sm"] == p.warps_per_sm
    assert [r["kernel"] for r in doc["rows"]] == ["gemv_words", "int_mma_cupy"] * 2
    without = rows_of(capsys, "--format", "int4", "--m", "16", "--shape", "8192", "28672", "--no-cupy")
    assert without["rows"][0]["kernel"] == "tile_dot"


def test_a_table_by_default_and_the_four_benchmark_layers(capsys):
    status, out, _ = run(capsys, "gpu-model", "--format", "int2", "--m", "1")
    assert status == 0 and "predictions, not measurements" in out.splitlines()[0]
    assert [line.split()[2:4] for line in out.splitlines()[2:]] == [
        ["4096", "4096"], ["4096", "11008"], ["11008", "4096"], ["8192", "28672"]]
    status, out, _ = run(capsys, "gpu-model", "--format", "int2", "--m", "1", "--shape", "128", "64", "--markdown")
    assert status == 0 and out.startswith("| format | M | K | N |")


def test_what_if_the_gpu_or_the_compiled_kernel_were_otherwise(capsys):
    """``--set`` replaces a constant of the preset, ``--registers`` the registers of the compiled kernel."""
    shape = ("--shape", "8192", "28672", "--m", "1")
    base = rows_of(capsys, "--format", "int8", *shape)["rows"][0]
    fast = rows_of(capsys, "--format", "int8", *shape, "--set", "copy_gbps=6040")
    assert fast["gpu"]["copy_gbps"] == 6040 and "changed: copy_gbps=6040" in fast["gpu"]["name"]
    assert fast["rows"][0]["memory_us"] == pytest.approx(base["memory_us"] / 2)
    wide = rows_of(capsys, "--format", "int5", *shape, "--registers", "168")["rows"][0]
    shipped = rows_of(capsys, "--format", "int5", *shape)["rows"][0]
    assert (shipped["warps_per_sm"], wide["warps_per_sm"]) == (8, 12) and wide["graph_us"] < shipped["graph_us"]


def test_a_launch_without_a_count_says_why_in_its_row(capsys, isolated_registry):
    hwlab.define_lut("gpu_model_apot4", [0, 0.25, 0.5, 1, 1.5, 2, 3, 4, -0.25, -0.5, -1, -1.5, -2, -3, -4])
    status, out, _ = run(capsys, "gpu-model", "--format", "gpu_model_apot4", "int4", "--m", "1", "20",
                         "--shape", "4096", "4096")
    assert status == 0
    assert "gpu_model_apot4 M=1 K=4096 N=4096: no instruction count for gpu_model_apot4 in gemv_words" in out
    assert "gpu_model_apot4 has no counts" in out and "--counts-of" not in out.splitlines()[0]
    assert sum(line.startswith("int4 ") and len(line.split()) == 12 for line in out.splitlines()) == 2
    with pytest.raises(gpu.UncountedLaunch, match=r"no instruction count for int4 in tile_dot \(BM=128\): int4 is "
                                                  r"counted for gemv_words \(BM=1\), int_mma_cupy \(BM=8\)"):
        gpu.instruction_row("int4", "tile_dot", 128)


def test_a_format_of_your_own_with_the_counts_of_a_built_in(capsys, isolated_registry):
    """A 16-entry table runs nf4's kernel (the same launch): ``--counts-of nf4`` predicts it with nf4's counts."""
    hwlab.define_lut("gpu_model_apot4", [0, 0.25, 0.5, 1, 1.5, 2, 3, 4, -0.25, -0.5, -1, -1.5, -2, -3, -4])
    shape = ("--m", "1", "--shape", "8192", "28672")
    own = rows_of(capsys, "--format", "gpu_model_apot4", *shape, "--counts-of", "nf4")["rows"][0]
    nf4 = rows_of(capsys, "--format", "nf4", *shape)["rows"][0]
    assert own["counts_of"] == "nf4" and own["launch"].split(",")[:2] == nf4["launch"].split(",")[:2]
    assert own["decode_us"] == pytest.approx(nf4["decode_us"])
    status, out, _ = run(capsys, "gpu-model", "--format", "gpu_model_apot4", *shape, "--counts-of", "nf4")
    assert status == 0 and "note: every row is predicted with the instruction counts of nf4" in out
    doc = rows_of(capsys, "--format", "gpu_model_apot4", "int4", *shape, "--counts-of", "int2")
    assert doc["notes"] == ["every row is predicted with the instruction counts of int2"]
    for row in doc["rows"]:  # int2's GEMV decodes other codes in other steps: its counts are another kernel's
        assert "--counts-of int2: its launch here is 'gemv_words: BN=32 BM=1 KS=2048" in row["error"]
    assert "--counts-of nf5: unknown format" in one_error_line(capsys, "gpu-model", "--format", "int4",
                                                                "--counts-of", "nf5", "--shape", "128", "64")


def test_registers_replace_the_launch_s_own_cap(capsys):
    """int2's GEMV ships capped at 128 registers; ``--registers 168`` is the uncapped compile of run 16 (34.4 us)."""
    shape = ("--format", "int2", "--m", "1", "--shape", "8192", "28672")
    capped, wide = rows_of(capsys, *shape)["rows"][0], rows_of(capsys, *shape, "--registers", "168")["rows"][0]
    assert "at most 128 registers" in capped["launch"] and "at most 168 registers" in wide["launch"]
    assert (capped["warps_per_sm"], wide["warps_per_sm"]) == (16, 12)
    assert wide["graph_us"] == pytest.approx(34.0, abs=0.05)


@pytest.mark.parametrize("argv, match", [
    (["--set", "clock=2"], "--set 'clock=2': expected FIELD=VALUE with FIELD one of"),
    (["--set", "copy_gbps"], "expected FIELD=VALUE"),
    (["--set", "copy_gbps=fast"], "'fast' is not a number"),
    (["--set", "sms=0"], "sms must be an integer from 1 to 1e[+]12, got 0"),
    (["--set", "sms=1" + "0" * 400], "sms must be an integer from 1 to"),
    (["--set", "issue_efficiency=2"], "issue_efficiency is a fraction of a peak"),
    (["--preset", "a100"], "unknown GPU preset 'a100'"),
    (["--m", "0"], "--m 0: expected a whole number from 1 to 67108864"),
    (["--m", "4" + "0" * 302], "--m 40+: expected a whole number from 1 to"),
    (["--shape", "0", "4096"], "--shape 0: expected a whole number"),
    (["--shape", "128", "99999999"], "--shape 99999999: expected a whole number from 1 to 67108864"),
    (["--registers", "300"], r"--registers 300: expected a whole number from 16 to 255"),
    (["--registers", "8"], r"--registers 8: expected"),
    (["--shape", "2000000", "64"], r"--shape 2000000 ...: K is at most 1048576"),
    (["--set", "registers_per_sm=1"], "no SM of h100 .* holds a program of 4 warps"),
    (["--set", "clock_ghz=5e-324"], "clock_ghz must be a number from 1e-06 to 1e[+]12, got 5e-324"),
    (["--group-size", "0"], "--format int4 at --shape K=128 --group-size 0: "),
    (["--format", "int4x"], "int4x"),
])
def test_bad_command_lines_get_one_error_line(capsys, argv, match):
    argv = (["--format", "int4"] if "--format" not in argv else []) + argv
    err = one_error_line(capsys, "gpu-model", *argv, *(["--shape", "128", "64"] if "--shape" not in argv else []))
    assert re.search(match, err), err


def test_the_command_needs_neither_torch_nor_triton_nor_cupy():
    """The model reads the instruction table and the launch rules only: a machine without the kernels' extra runs
    it (a separate process, with those packages made unimportable)."""
    import subprocess
    import sys

    script = ("import sys\n"
              "for name in ('torch', 'triton', 'cupy'):\n"
              "    sys.modules[name] = None\n"
              "from hwlab.cli import main\n"
              "sys.exit(main(['gpu-model', '--format', 'int4', '--m', '1', '16', '--shape', '8192', '28672']))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "gemv_words" in done.stdout and "int_mma_cupy" in done.stdout
