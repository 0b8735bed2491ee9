import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _cuda_usable() -> bool:
    try:
        from cryoorient import _ext
    except ImportError:
        return False
    return _ext.cuda_compiled() and torch.cuda.is_available()


CUDA = _cuda_usable()


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA GPU and cryoorient built with CUDA kernels")
    for item in items:
        if "cuda" in item.keywords and not CUDA:
            item.add_marker(skip)


def pytest_generate_tests(metafunc):
    """A test taking `device` runs on the CPU and on CUDA (the latter marked `cuda`, skipped without a GPU)."""
    if "device" in metafunc.fixturenames:
        metafunc.parametrize(
            "device", [torch.device("cpu"), pytest.param(torch.device("cuda"), marks=pytest.mark.cuda)], ids=["cpu", "cuda"]
        )


@pytest.fixture
def shared_data():
    """The project's shared data folder (../shared/data beside the checkout); skip if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(params=["default", "mma"])
def tensor_core_engine(request, monkeypatch):
    """Runs a CUDA all-pairs test with each bf16/fp16 tile engine: the default (wgmma on an
    sm_90a build on Hopper, else mma.sync) and mma.sync forced by CRYOORIENT_NO_WGMMA."""
    if request.param == "mma":
        monkeypatch.setenv("CRYOORIENT_NO_WGMMA", "1")
    else:
        monkeypatch.delenv("CRYOORIENT_NO_WGMMA", raising=False)
    return request.param


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(min(2, os.cpu_count() or 1))
