"""Shared fixtures: seeded random generators and weight matrices; Triton's interpreter without a GPU."""
import os

import numpy as np
import pytest

if "TRITON_INTERPRET" not in os.environ and not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0")):
    os.environ["TRITON_INTERPRET"] = "1"  # no GPU (CI): Triton kernels run in its interpreter on CPU tensors


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


@pytest.fixture(scope="session")
def kernel_device():
    """Where kernel tests run: the GPU when there is one, else the CPU through Triton's interpreter."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("triton", reason="triton is not installed")
    from hwlab.kernels.dispatch import interpreted

    if torch.cuda.is_available() and not interpreted():
        return "cuda"
    if interpreted():
        return "cpu"
    pytest.skip("no CUDA GPU, and TRITON_INTERPRET=1 was not set before hwlab.kernels was imported")
