"""The `hwlab` command line, and the README that documents it (its commands and Python tour run)."""
import doctest
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

import hwlab
from hwlab.cli import format_facts, main, read_weights
from hwlab.formats import Format, get_format, list_formats
from hwlab.sample import sample_path, sample_weights

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
QUERY = "encoder.layer.0.attention.self.query.weight"
FFN_UP = "encoder.layer.0.intermediate.dense.weight"


def run(capsys, *argv):
    """``main(argv)`` in-process: (exit status, stdout, stderr)."""
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def run_json(capsys, *argv):
    status, out, err = run(capsys, *argv, "--json")
    assert status == 0, err
    return json.loads(out)


# ---- hwlab formats ---------------------------------------------------------------------------

def test_formats_table_lists_every_registered_format(capsys):
    status, out, err = run(capsys, "formats")
    assert status == 0 and err == ""
    first_column = [line.split()[0] for line in out.splitlines()[1:] if line.strip()]
    for name in list_formats():
        assert name in first_column


def test_formats_json_has_one_entry_per_format_with_the_documented_fields(capsys):
    facts = run_json(capsys, "formats")
    assert [f["name"] for f in facts] == list_formats()
    for f in facts:
        assert set(f) == {"name", "family", "bits", "min", "max", "smallest_step", "rounding", "group_size",
                          "fixed_group", "granularity", "bits_per_weight", "description"}


def test_formats_family_filter_and_unknown_family(capsys):
    assert {f["family"] for f in run_json(capsys, "formats", "--family", "bitmod")} == {"bitmod"}
    status, out, err = run(capsys, "formats", "--family", "nosuch")
    assert status == 2 and out == ""
    assert err.startswith("hwlab: error: no format of family 'nosuch'; families:") and err.count("\n") == 1


@pytest.mark.parametrize("name, expected", [
    ("int4", 4 + 16 / 128),  # 4-bit codes + one fp16 scale per 128
    ("int4_asym", 4 + 16 / 128 + 4 / 128),  # + a 4-bit zero point per group
    ("bitmod_fp4", 4 + 16 / 128 + 2 / 128),  # + a 2-bit type id per group (BitMoD: 4.125 + 1/64)
    ("nf4", 4 + 16 / 128),
    ("ternary", 2 + 16 / 4096**2),  # one fp16 scale for the whole matrix
])
def test_formats_bits_per_weight_at_group_128(name, expected):
    facts = format_facts(name)
    assert facts["bits_per_weight"] == expected
    assert facts["fixed_group"] is False


@pytest.mark.parametrize("name, block, expected", [
    ("mxfp4", 32, 4 + 8 / 32),  # OCP MX v1.0: E8M0 scale per 32
    ("nvfp4", 16, 4 + 8 / 16 + 32 / 4096**2),  # E4M3 per 16 + one float32 per tensor
])
def test_formats_with_fixed_blocks_use_their_own(name, block, expected):
    assert name in list_formats(), f"{name} is a built-in format and must be registered"
    facts = format_facts(name)
    assert (facts["group_size"], facts["fixed_group"]) == (block, True)
    assert facts["bits_per_weight"] == expected


def test_formats_table_bits_per_weight_matches_a_real_quantization():
    facts = format_facts("bitmod_fp3")
    qt = hwlab.quantize(np.zeros((1, 4096), np.float32) + 1.0, "bitmod_fp3", facts["group_size"])
    assert qt.bits_per_weight == facts["bits_per_weight"]  # 4096 codes of 3 bits fill whole words


def test_formats_ranges_come_from_info_members_or_values():
    assert (format_facts("fp4_e2m1")["min"], format_facts("fp4_e2m1")["max"]) == (-6.0, 6.0)
    nf4 = format_facts("nf4")
    assert nf4["smallest_step"] == min(np.diff(np.sort(get_format("nf4").values)))
    mixture = format_facts("bitmod_fp4")  # no info of its own: the union of its members'
    assert (mixture["min"], mixture["max"], mixture["rounding"]) == (-8.0, 8.0, "nearest_down")


class _ValuesOnly(Format):
    """A scheme exposing only a 2-D ``values`` table (and no array_specs)."""

    name, bits, family, description = "values_only_test", 2, "test", "test format"
    values = np.array([[0.0, 1.0, np.nan, -1.0], [0.0, 0.5, 2.0, -2.0]])


class _Bare(Format):
    """A scheme with neither info, members nor values."""

    name, bits, family, description = "bare_test", 3, "test", "test format"


def test_formats_without_info_or_values_still_print(capsys, isolated_registry):
    hwlab.register_format(_ValuesOnly())
    hwlab.register_format(_Bare())
    values_only, bare = format_facts("values_only_test"), format_facts("bare_test")
    assert (values_only["min"], values_only["max"], values_only["smallest_step"]) == (-2.0, 2.0, 0.5)
    assert values_only["bits_per_weight"] is None and values_only["rounding"] is None
    assert (bare["min"], bare["max"], bare["smallest_step"], bare["bits_per_weight"]) == (None,) * 4
    status, out, _ = run(capsys, "formats", "--family", "test")
    assert status == 0
    assert re.search(r"^bare_test\s+test\s+3\s+-\s+-\s+-\s+-\s+128\s+-$", out, re.M)
    assert [f["min"] for f in run_json(capsys, "formats", "--family", "test")] == [-2.0, None]


def test_readme_formats_table_is_current():
    """README's table is `hwlab formats --markdown` in a fresh process (built-ins only)."""
    text = README.read_text()
    begin, end = "<!-- begin: hwlab formats --markdown -->\n", "<!-- end: hwlab formats --markdown -->"
    table = text[text.index(begin) + len(begin):text.index(end)]
    fresh = subprocess.run([sys.executable, "-m", "hwlab.cli", "formats", "--markdown"],
                           capture_output=True, text=True, check=True).stdout
    assert table == fresh, "regenerate the README formats table with `hwlab formats --markdown`"


# ---- hwlab quantize --------------------------------------------------------------------------

def test_quantize_sample_prints_metrics_per_tensor(capsys):
    status, out, err = run(capsys, "quantize", "--sample", "--format", "int4")
    assert status == 0 and err == ""
    assert "format int4, group size 128" in out
    assert QUERY in out and FFN_UP in out


def test_quantize_json_metrics_equal_the_library(capsys):
    report = run_json(capsys, "quantize", "--sample", "--format", "nf4", "--group-size", "64",
                      "--scale-dtype", "bf16", "--tensor", FFN_UP)
    w = sample_weights(FFN_UP)[FFN_UP]
    qt = hwlab.quantize(w, "nf4", group_size=64, scale_dtype="bf16")
    assert report["format"] == "nf4" and report["group_size"] == 64 and report["out"] is None
    assert report["options"]["scale_dtype"] == "bf16"
    [row] = report["tensors"]
    assert row["tensor"] == FFN_UP and row["shape"] == [1536, 384]
    assert row["bits_per_weight"] == qt.bits_per_weight
    for key, value in qt.error(w).items():
        assert row[key] == value, key


def test_quantize_out_file_loads_bit_exactly(capsys, tmp_path):
    out = tmp_path / "q.safetensors"
    status, stdout, _ = run(capsys, "quantize", "--sample", "--format", "bitmod_fp3", "--tensor", QUERY,
                            "--scale-search", "mse", "--out", str(out))
    assert status == 0 and f"wrote {out}" in stdout
    w = sample_weights(QUERY)[QUERY]
    expected = hwlab.quantize(w, "bitmod_fp3", scale_search="mse")
    loaded = hwlab.load(out)
    assert (loaded.format_name, loaded.shape, loaded.group_size) == ("bitmod_fp3", (384, 384), 128)
    assert loaded.arrays.keys() == expected.arrays.keys()
    for name, array in expected.arrays.items():
        assert loaded.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded.arrays[name], array, err_msg=name)
    np.testing.assert_array_equal(loaded.dequantize(), expected.dequantize())


def test_quantize_npy_with_generic_option_and_padding(capsys, tmp_path, rng):
    w = rng.standard_normal((8, 200)).astype(np.float32)
    path = tmp_path / "w.npy"
    np.save(path, w)
    report = run_json(capsys, "quantize", str(path), "--format", "int3", "--pad",
                      "--option", "clip_ratios=(1.0, 0.8)", "--option", "scale_search=mse")
    assert report["options"]["clip_ratios"] == [1.0, 0.8]
    [row] = report["tensors"]
    qt = hwlab.quantize(w, "int3", pad=True, clip_ratios=(1.0, 0.8), scale_search="mse")
    assert row["tensor"] == "w" and row["mse"] == qt.error(w)["mse"]


def test_quantize_reads_bf16_safetensors_exactly(capsys, tmp_path, rng):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    w = torch.from_numpy(rng.standard_normal((4, 128)).astype(np.float32)).to(torch.bfloat16)
    path = tmp_path / "bf16.safetensors"
    save_file({"w": w, "bias": torch.zeros(4)}, str(path))  # the 1-D bias is skipped
    weights = read_weights(path)
    assert list(weights) == ["w"]
    np.testing.assert_array_equal(weights["w"], w.float().numpy())
    report = run_json(capsys, "quantize", str(path), "--format", "fp8_e4m3")
    assert [r["tensor"] for r in report["tensors"]] == ["w"]


def test_exact_quantization_reports_infinite_sqnr_as_a_string(capsys, tmp_path):
    path = tmp_path / "small_ints.npy"
    np.save(path, np.array([[127.0, -64.0, 1.0, 0.0]] * 2, np.float32))  # scale 1: exact
    [row] = run_json(capsys, "quantize", str(path), "--format", "int8", "--group-size", "4")["tensors"]
    assert row["sqnr_db"] == "inf" and row["mse"] == 0.0


def test_quantize_every_format_on_a_small_matrix(capsys, tmp_path, rng):
    """No registered format crashes the command (each at its own default group size)."""
    path = tmp_path / "w.npy"
    np.save(path, rng.standard_normal((4, 256)).astype(np.float32))
    for name in list_formats():
        status, _, err = run(capsys, "quantize", str(path), "--format", name)
        assert status == 0, (name, err)


# ---- hwlab info ------------------------------------------------------------------------------

def test_info_describes_a_saved_tensor(capsys, tmp_path, gaussian_weights):
    path = tmp_path / "t.safetensors"
    qt = hwlab.quantize(gaussian_weights, "int4_asym", group_size=64, scale_dtype="int8")
    qt.save(path)
    report = run_json(capsys, "info", str(path))
    assert report["format"] == "int4_asym" and report["shape"] == [64, 512] and report["group_size"] == 64
    assert report["bits_per_weight"] == qt.bits_per_weight and report["bytes"] == qt.nbytes
    assert set(report["arrays"]) == {"codes", "scales", "row_scales", "zeros"}
    assert report["arrays"]["codes"] == {"dtype": "uint32", "shape": [64, 64], "bytes": 64 * 64 * 4,
                                         "layout": qt.layout["codes"].to_json()}
    assert report["arrays"]["zeros"]["layout"] == {
        "role": "zeros", "dtype": "uint32", "shape": [64, 1], "bits": 4, "packing": "bits", "entries": 8,
        "applies_to": "group", "group_size": 64, "encoding": "uint", "member": None, "decode": None, "axis": 1}
    status, out, _ = run(capsys, "info", str(path))
    assert status == 0 and "int4_asym (integer, 4-bit) 64x512, group size 64" in out


# ---- errors: one line on stderr, exit status 2 -----------------------------------------------

@pytest.fixture
def files(tmp_path, gaussian_weights):
    """Paths of assorted inputs for the error cases."""
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4), np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((2, 128), np.int32))
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "weights.txt").write_text("1 2 3")
    from safetensors.numpy import save_file

    save_file({"codes": np.zeros((2, 2), np.int8)}, str(tmp_path / "intonly.safetensors"))
    save_file({"w": gaussian_weights, "c": np.zeros((4, 4), np.int8)}, str(tmp_path / "mixed.safetensors"))
    hwlab.quantize(gaussian_weights, "int4").save(tmp_path / "q.safetensors")
    return tmp_path


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: COMMAND"),
    (["nosuch"], "invalid choice: 'nosuch'"),
    (["quantize", "--sample", "--format", "int44"], "unknown format 'int44'; did you mean"),
    (["quantize", "--sample", "--format", "int4", "--group-size", "100"], "group_size must divide K=384, got 100"),
    (["quantize", "--sample", "--format", "int4", "--group-size", "0"], "group_size must be a positive integer"),
    (["quantize", "--sample", "--format", "int4", "--group-size", "x"], "invalid int value: 'x'"),
    (["quantize", "--format", "int4"], "quantize needs a FILE"),
    (["quantize", "{d}/cube.npy", "--sample", "--format", "int4"], "either a FILE or --sample"),
    (["quantize", "--sample"], "the following arguments are required: --format"),
    (["quantize", "{d}/missing.npy", "--format", "int4"], "no such file"),
    (["quantize", "{d}/cube.npy", "--format", "int4"], "W must be 2-D"),
    (["quantize", "{d}/ints.npy", "--format", "int4"], "W must be a floating-point array"),
    (["quantize", "{d}/weights.txt", "--format", "int4"], "expected a .npy or .safetensors file"),
    (["quantize", "{d}/junk.safetensors", "--format", "int4"], "not a readable safetensors file"),
    (["quantize", "{d}/intonly.safetensors", "--format", "int4"], "has no 2-D floating-point tensor"),
    (["quantize", "{d}/mixed.safetensors", "--format", "int4", "--tensor", "c"], "tensor 'c' has dtype I8"),
    (["quantize", "{d}/q.safetensors", "--format", "int4"], "holds a quantized tensor, not weights"),
    (["quantize", "--sample", "--format", "int4", "--tensor", "nope"], "no tensor 'nope' in"),
    (["quantize", "{d}/cube.npy", "--format", "int4", "--tensor", "w"], "--tensor applies to .safetensors"),
    (["quantize", "--sample", "--format", "int4", "--out", "{d}/o.safetensors"], "--out writes one quantized tensor"),
    (["quantize", "--sample", "--format", "int4", "--tensor", QUERY, "--out", "{d}/no/o.safetensors"],
     "directory {d}/no does not exist"),
    (["quantize", "--sample", "--format", "int4", "--scale-dtype", "fp12"], "scale_dtype must be one of"),
    (["quantize", "--sample", "--format", "int4", "--granularity", "row"], "granularity must be one of"),
    (["quantize", "--sample", "--format", "int4", "--option", "colour=1"], "unknown option 'colour'"),
    (["quantize", "--sample", "--format", "int4", "--option", "oops"], "--option expects KEY=VALUE"),
    (["quantize", "--sample", "--format", "int4", "--scale-dtype", "bf16", "--option", "scale_dtype=fp16"],
     "option 'scale_dtype' is given twice"),
    (["quantize", "--sample", "--format", "int4", "--json", "--markdown"], "unrecognized arguments: --markdown"),
    (["info", "{d}/missing.safetensors"], "no such file"),
    (["info", "{d}/mixed.safetensors"], "has no 'hwlab' metadata"),
    (["info", "{d}/junk.safetensors"], "not a readable safetensors file"),
    (["formats", "--json", "--markdown"], "not allowed with argument --json"),
])
def test_errors_print_one_line_and_exit_2(capsys, files, argv, message):
    status, out, err = run(capsys, *[a.format(d=files) for a in argv])
    assert status == 2
    assert out == ""
    assert err.startswith("hwlab: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert message.format(d=files) in err


def test_module_entry_point_exits_2_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hwlab.cli", "quantize", str(tmp_path / "x.npy"),
                             "--format", "int4"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"hwlab: error: no such file: {tmp_path / 'x.npy'}\n"


def test_version_and_sample_path(capsys):
    assert run(capsys, "--version") == (0, f"hwlab {hwlab.__version__}\n", "")
    status, out, _ = run(capsys, "sample-path")
    assert status == 0 and pathlib.Path(out.strip()) == sample_path()


# ---- README ----------------------------------------------------------------------------------

def _readme_commands():
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    return [shlex.split(line)[1:] for block in blocks for line in block.splitlines() if line.startswith("hwlab ")]


def test_readme_starts_with_install_and_test_commands():
    first_block = re.search(r"```bash\n(.*?)```", README.read_text(), re.S).group(1)
    assert first_block.splitlines() == ['pip install -e ".[dev]"', "pytest"]


def test_readme_commands_run(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # they write files
    commands = _readme_commands()
    assert ["quantize", "--sample", "--format", "bitmod_fp4"] in commands and ["study"] in commands
    for argv in commands:
        if argv == ["study"]:  # the default study (minutes): tests/test_study.py runs exactly this command
            continue
        status, _, err = run(capsys, *argv)
        assert status == 0, (argv, err)


def test_readme_python_tour_runs(tmp_path, monkeypatch, isolated_registry):
    monkeypatch.chdir(tmp_path)  # it saves a file
    result = doctest.testfile(str(README), module_relative=False, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 10 and result.failed == 0


DEFINITIONS = '''
from hwlab import define_lut
define_lut("cli_apot4", [0, 0.25, 0.5, 1, 1.5, 2, 3, 4, -0.25, -0.5, -1, -1.5, -2, -3, -4])
'''


def _definitions_file(tmp_path):
    path = tmp_path / "my_dtypes.py"
    path.write_text(DEFINITIONS)
    return path


def test_define_makes_a_user_format_work_in_every_command(tmp_path):
    defs = _definitions_file(tmp_path)
    w = np.random.default_rng(3).standard_normal((8, 256)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    out = tmp_path / "q.safetensors"
    base = [sys.executable, "-m", "hwlab.cli", "--define", str(defs)]
    listed = subprocess.run(base + ["formats", "--json"], capture_output=True, text=True, check=True)
    assert "cli_apot4" in {f["name"] for f in json.loads(listed.stdout)}
    subprocess.run(base + ["quantize", str(tmp_path / "w.npy"), "--format", "cli_apot4", "--out", str(out)],
                   capture_output=True, text=True, check=True)
    info = subprocess.run(base + ["info", str(out), "--json"], capture_output=True, text=True, check=True)
    assert json.loads(info.stdout)["format"] == "cli_apot4"
    env = {**os.environ, "HWLAB_DEFINE": str(defs)}
    via_env = subprocess.run([sys.executable, "-m", "hwlab.cli", "info", str(out)], capture_output=True,
                             text=True, env=env)
    assert via_env.returncode == 0 and "cli_apot4" in via_env.stdout


@pytest.mark.parametrize("content, match", [
    (None, "--define: no such file"),
    ("raise RuntimeError('boom')", r"--define .*RuntimeError: boom"),
    ("from hwlab import define_lut\ndefine_lut('int4', [0, 1])", "built-in format"),
], ids=["missing", "raises", "redefines-builtin"])
def test_define_errors_are_one_line(tmp_path, content, match):
    path = tmp_path / "defs.py"
    if content is not None:
        path.write_text(content)
    done = subprocess.run([sys.executable, "-m", "hwlab.cli", "--define", str(path), "formats"],
                          capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwlab: error:")
    assert re.search(match, lines[0]), lines[0]


def test_a_saved_user_format_works_without_define(tmp_path):
    """A colleague's file: `info` and `quantize --format FILE` rebuild its format, and say so."""
    defs = _definitions_file(tmp_path)
    w = np.random.default_rng(4).standard_normal((8, 256)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    out, again = tmp_path / "q.safetensors", tmp_path / "again.safetensors"
    subprocess.run([sys.executable, "-m", "hwlab.cli", "--define", str(defs), "quantize", str(tmp_path / "w.npy"),
                    "--format", "cli_apot4", "--out", str(out)], capture_output=True, text=True, check=True)
    bare = [sys.executable, "-m", "hwlab.cli"]
    info = subprocess.run(bare + ["info", str(out)], capture_output=True, text=True)
    assert info.returncode == 0 and "cli_apot4" in info.stdout
    assert "hwlab: note:" in info.stderr and "rebuilt it from the definition stored in the file" in info.stderr
    done = subprocess.run(bare + ["quantize", str(tmp_path / "w.npy"), "--format", str(out), "--out", str(again),
                                  "--json"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["format"] == "cli_apot4"
    with pytest.warns(hwlab.formats.FormatRebuiltWarning):
        first, second = hwlab.load(out), hwlab.load(again)
    assert np.array_equal(first.dequantize(), second.dequantize())


def test_formats_name_shows_options_values_and_decomposition(capsys):
    status, out, _ = run(capsys, "formats", "olive4")
    assert status == 0 and "olive4 (outlier_victim, 4-bit)" in out
    assert re.search(r"granularity\s+'group'\s+'group', 'channel'", out) and "scale_search" not in out
    detail = run_json(capsys, "formats", "fp4_e2m1")
    assert set(detail["options"]) == set(get_format("fp4_e2m1").options)
    assert detail["options"]["scale_dtype"]["choices"] == ["fp16", "bf16", "fp32", "e8m0", "e4m3", "int8"]
    assert detail["values"] == [get_format("fp4_e2m1").values.tolist()]
    assert detail["decomposition"]["fields"]["kind"] == "minifloat" and detail["decomposition"]["magnitude_bits"] == 2
    assert run_json(capsys, "formats", "nf4")["decomposition"] is None
    status, _, err = run(capsys, "formats", "nf4", "--family", "lookup")
    assert status == 2 and "--family and --markdown apply to the table" in err


@pytest.mark.parametrize("fmt, flag, value, message", [
    ("olive4", "--scale-search", "mse", "unknown option 'scale_search' for format 'olive4'; expected one of "
                                        r"\['granularity', 'scale_dtype'\]"),
    ("mixed_2_4", "--granularity", "channel", "unknown option 'granularity' for format 'mixed_2_4'"),
    ("mxfp4", "--scale-dtype", "fp16", "unknown option 'scale_dtype' for format 'mxfp4'"),
    ("olive4", "--granularity", "tensor", r"olive4: granularity must be one of \('group', 'channel'\), got 'tensor'"),
])
def test_option_flags_follow_each_formats_declared_options(capsys, fmt, flag, value, message):
    status, _, err = run(capsys, "quantize", "--sample", "--format", fmt, flag, value)
    assert status == 2 and re.search(message, err), err


def test_define_files_that_exit_or_repeat(tmp_path):
    exits = tmp_path / "exits.py"
    exits.write_text("import sys\nsys.exit(0)\n")
    done = subprocess.run([sys.executable, "-m", "hwlab.cli", "--define", str(exits), "formats"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip() == f"hwlab: error: --define {exits}: SystemExit: 0"
    defs = _definitions_file(tmp_path)
    twice = subprocess.run([sys.executable, "-m", "hwlab.cli", "--define", str(defs), "formats", "cli_apot4"],
                           capture_output=True, text=True, env={**os.environ, "HWLAB_DEFINE": str(defs)})
    assert twice.returncode == 0, twice.stderr


def test_format_from_a_saved_file_brings_its_group_size_and_options(capsys, tmp_path, rng):
    w = rng.standard_normal((8, 256)).astype(np.float32)
    np.save(tmp_path / "w.npy", w)
    like = tmp_path / "like.safetensors"
    hwlab.quantize(w, "int4_asym", 64, scale_dtype="bf16", scale_search="mse").save(like)
    report = run_json(capsys, "quantize", str(tmp_path / "w.npy"), "--format", str(like))
    assert report["group_size"] == 64 and report["options"]["scale_dtype"] == "bf16"
    assert report["options"]["scale_search"] == "mse"
    report = run_json(capsys, "quantize", str(tmp_path / "w.npy"), "--format", str(like), "--group-size", "128",
                      "--scale-dtype", "fp16")
    assert report["group_size"] == 128 and report["options"]["scale_dtype"] == "fp16"
