"""The GPU model (:mod:`hwlab.sim.gpu`): weighted SASS counts, one launch for split-K, a host floor."""
import dataclasses

import pytest

from hwlab.sim import gpu


@dataclasses.dataclass(frozen=True)
class FakeLaunch:
    kernel: str
    bm: int
    split: int
    half_pairs: bool = False
    weights_first: bool = False


def test_every_counted_row_has_weighted_and_raw_counts():
    import json

    with open(gpu.DATA) as f:
        rows = json.load(f)["rows"]
    assert rows
    for r in rows:
        assert r["weighted_per_code"] >= r["instructions_per_code"] * 0.999 - 1e-9  # never below the issue bound
        assert sum(r["opcodes"].values()) == r["loop_instructions"]  # every opcode kept, not only the top ones


def test_prediction_terms():
    p = gpu.predict("h200", "int4", 1, 8192, 28672, bits_per_weight=4.125, launch=FakeLaunch("gemv_words", 1, 3))
    assert p.bound in ("memory", "decode") and p.us == pytest.approx(p.graph_us)
    assert p.graph_us == pytest.approx(max(p.memory_us, p.decode_us) + p.overhead_us)
    tiny = gpu.predict("h200", "int4", 1, 128, 128, bits_per_weight=4.125, launch=FakeLaunch("gemv_words", 1, 1))
    assert tiny.bound == "host" and tiny.us == gpu.PRESETS["h200"].host_call_us > tiny.graph_us


def test_fp16_pair_tiles_issue_at_their_own_rate():
    h200 = gpu.PRESETS["h200"]
    float32 = gpu.predict("h200", "int4", 16, 8192, 28672, bits_per_weight=4.125, launch=FakeLaunch("tile_dot", 16, 2))
    pairs = gpu.predict("h200", "int4", 16, 8192, 28672, bits_per_weight=4.125,
                        launch=FakeLaunch("tile_dot", 16, 2, half_pairs=True))
    assert pairs.decode_us == pytest.approx(float32.decode_us * h200.issue_efficiency / h200.pair_tile_efficiency)
    first = gpu.predict("h200", "int4", 16, 8192, 28672, bits_per_weight=4.125,
                        launch=FakeLaunch("tile_dot", 16, 2, half_pairs=True, weights_first=True))
    assert first.decode_us == pytest.approx(float32.decode_us * h200.issue_efficiency / h200.weights_first_efficiency)


def test_unknown_counts_and_presets_are_refused():
    with pytest.raises(ValueError, match="no instruction count"):
        gpu.predict("h200", "int4", 1, 64, 64, bits_per_weight=4, launch=FakeLaunch("gemv_words", 7, 1))
    with pytest.raises(ValueError, match="unknown GPU preset"):
        gpu.get_gpu("a100")
