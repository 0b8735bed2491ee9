"""cryoorient's compiled kernels as PyTorch ops (eager, autograd, torch.compile; CPU and CUDA).

Each op validates its inputs with clear errors and has a plain-PyTorch reference of
the same name in ``cryoorient.ops._torch_impl``.
"""

from .pair_loss import pair_loss
from .qdist import qdist

__all__ = ["pair_loss", "qdist"]
