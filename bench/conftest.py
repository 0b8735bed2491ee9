"""The pytest-benchmark suite's fixtures: devices, sizes, the timing rule and the records.

Every benchmark runs on the CPU (small sizes: the whole CPU group takes seconds) and on CUDA
(skipped without a GPU and cryoorient's CUDA kernels). A benchmark group holds one op or
pipeline step on one device ("qdist cuda"): cryoorient next to the plain-PyTorch reference
(``cryoorient.ops._torch_impl``) eager and under ``torch.compile``.

Timing: the timed function ends with a device synchronisation, so a round is the wall time of
one call including its GPU work. An untimed call comes first (it compiles, fills the allocator
and the caches); a second, also untimed, sets the number of rounds to about ``BUDGET_S`` of
measurement, at least ``MIN_ROUNDS`` (pedantic mode, one call per round). With ``--benchmark-disable``
(the CI smoke test) every function runs once, and ``torch.compile`` uses dynamo's ``eager``
backend (graphs are traced, not code-generated), so the smoke run stays short.

``extra_info`` of every benchmark: the device name, torch version, sizes and, when timed, the
derived rates (e.g. ``pairs_per_s``) and the fraction of the detected GPU's peak HBM bandwidth
or FLOP/s (``bench/_peak.py``; absent on the CPU or an unknown GPU).
"""

from __future__ import annotations

import time

import pytest
import torch

from _peak import device_name, fraction, lookup
from _timing import synchronize

BUDGET_S = 0.5  # measured time per benchmark (rounds = BUDGET_S / one call, clamped below)
MIN_ROUNDS, MAX_ROUNDS = 3, 200


def _cuda_skip_reason() -> str | None:
    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    from cryoorient import _ext

    return None if _ext.cuda_compiled() else "cryoorient was built without its CUDA kernels"


@pytest.fixture(scope="session", params=["cpu", "cuda"])
def device(request) -> torch.device:
    """Each benchmark on the CPU and on CUDA (skipped with a reason without a usable GPU)."""
    if request.param == "cuda" and (reason := _cuda_skip_reason()):
        pytest.skip(reason)
    return torch.device(request.param)


class Bench:
    """Runs one benchmark of a group with the suite's timing rule and records its extra_info."""

    def __init__(self, benchmark, device: torch.device) -> None:
        self.benchmark, self.device = benchmark, device

    @property
    def timed(self) -> bool:
        return not self.benchmark.disabled

    def compile(self, fn, **kwargs):
        """``torch.compile(fn)``; dynamo's eager backend when benchmarks are disabled (smoke test)."""
        return torch.compile(fn, backend="inductor" if self.timed else "eager", **kwargs)

    def __call__(self, group: str, fn, *, sizes: dict, rate: tuple[str, float] | None = None,
                 work: dict[str, float] | None = None):
        """Time ``fn()`` in group ``"<group> <device type>"`` and return its result.

        ``rate`` = (name, count): records ``<name>_per_s`` (e.g. ("pairs", M)). ``work`` maps a
        peak kind of ``bench/_peak.py`` to the amount one call needs ({"hbm": bytes moved,
        "fp32" or "bf16": FLOP}): records ``bytes``/``flop``, ``bytes_per_s``/``flop_per_s`` and,
        on a known GPU, ``<kind>_fraction`` of its peak.
        """
        b = self.benchmark
        b.group = f"{group} {self.device.type}"

        def call():
            out = fn()
            synchronize(self.device)
            return out

        rounds = 1
        if self.timed:
            _first_call(call)
            start = time.perf_counter()
            call()
            rounds = min(MAX_ROUNDS, max(MIN_ROUNDS, int(BUDGET_S / max(time.perf_counter() - start, 1e-9))))
        result = b.pedantic(call, rounds=rounds, iterations=1)
        info = b.extra_info
        info.update(device=device_name(self.device), torch=torch.__version__, sizes=sizes)
        if self.device.type == "cuda" and (peak := lookup(info["device"])) is not None:
            info["peak_model"] = peak.model
        if b.stats:
            median = b.stats.stats.median
            if rate is not None:
                info[f"{rate[0]}_per_s"] = rate[1] / median
            for kind, amount in (work or {}).items():
                unit = "bytes" if kind == "hbm" else "flop"
                info[unit], info[f"{unit}_per_s"] = amount, amount / median
                share = fraction(amount / median, kind, self.device)
                if share is not None:
                    info[f"{kind}_fraction"] = share
        return result


def _first_call(call) -> None:
    """The untimed first call; a reference that inductor cannot compile is skipped, saying why."""
    try:
        call()
    except Exception as err:  # torch._inductor.exc.InductorError, raised from inductor's worker
        if type(err).__name__ != "InductorError":
            raise
        reason = next((line for line in str(err).splitlines() if "Error(" in line), str(err).splitlines()[0])
        pytest.skip(f"torch.compile (inductor) cannot compile this reference: {reason.strip()}")


@pytest.fixture
def bench(benchmark, device) -> Bench:
    return Bench(benchmark, device)
