"""The real sample weights shipped in hwlab/data (two all-MiniLM-L6-v2 linear layers)."""
import numpy as np
import pytest

import hwlab
from hwlab.sample import sample_metadata, sample_path, sample_weights

QUERY = "encoder.layer.0.attention.self.query.weight"
FFN_UP = "encoder.layer.0.intermediate.dense.weight"
EXPECTED_SHAPES = {QUERY: (384, 384), FFN_UP: (1536, 384)}  # hidden 384, intermediate 1536 (model config)
MAX_FILE_BYTES = 2 * 1024 * 1024


def test_file_ships_inside_the_package_and_is_small():
    path = sample_path()
    assert path.is_file()
    assert path.parent.name == "data" and path.parent.parent.name == "hwlab"
    assert path.stat().st_size < MAX_FILE_BYTES
    assert (path.parent / "README.md").is_file()


def test_tensors_have_the_layer_shapes_and_are_finite_float16():
    weights = sample_weights()
    assert {name: w.shape for name, w in weights.items()} == EXPECTED_SHAPES
    for name, w in weights.items():
        assert w.dtype == np.float16, name
        assert np.isfinite(w).all(), name
        # trained weights, not a placeholder: spread out, centred, no constant rows
        assert 0.01 < float(w.astype(np.float64).std()) < 1.0, name
        assert abs(float(w.astype(np.float64).mean())) < 0.01, name
        assert (w.astype(np.float64).std(axis=1) > 0).all(), name


def test_metadata_names_source_license_and_tensors():
    meta = sample_metadata()
    assert "all-MiniLM-L6-v2" in meta["source"]
    assert meta["license"] == "Apache-2.0"
    assert len(meta["source_sha256"]) == 64 and int(meta["source_sha256"], 16) >= 0
    assert sorted(meta["tensors"].split(",")) == sorted(EXPECTED_SHAPES)
    assert "float16" in meta["conversion"]


def test_one_tensor_by_name():
    one = sample_weights(FFN_UP)
    assert list(one) == [FFN_UP]
    np.testing.assert_array_equal(one[FFN_UP], sample_weights()[FFN_UP])


def test_unknown_tensor_name_lists_the_choices():
    with pytest.raises(KeyError, match="no tensor 'layer9' in the sample weights; expected one of"):
        sample_weights("layer9")


def test_sample_quantizes_without_padding_at_group_128():
    w = sample_weights(QUERY)[QUERY]
    qt = hwlab.quantize(w, "int8", group_size=128)
    assert qt.error(w)["sqnr_db"] > 30  # 8-bit absmax groups on real weights
