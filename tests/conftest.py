"""Shared fixtures: seeded random generators and weight matrices."""
import numpy as np
import pytest


@pytest.fixture
def rng():
    """A fresh, seeded generator per test (fresh random inputs, reproducible failures)."""
    return np.random.default_rng(20261125)


@pytest.fixture
def gaussian_weights(rng):
    """A [64, 512] float32 matrix shaped like an LLM linear layer (std 0.02, a few outliers)."""
    w = rng.standard_normal((64, 512)).astype(np.float32) * 0.02
    w[rng.integers(0, 64, 8), rng.integers(0, 512, 8)] *= 12
    return w


@pytest.fixture
def isolated_registry(monkeypatch):
    """Formats a test registers (define_*, register_format) are forgotten after it."""
    from hwlab.formats import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_BUILTIN", set(registry._BUILTIN))
    return registry
