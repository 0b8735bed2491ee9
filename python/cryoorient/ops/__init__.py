"""cryoorient's compiled kernels as PyTorch ops (eager, autograd, torch.compile; CPU and CUDA).

Each op validates its inputs with clear errors and has a plain-PyTorch reference of
the same name in ``cryoorient.ops._torch_impl``.
"""

from .align_loss import align_loss
from .pair_loss import pair_loss
from .qdist import qdist

__all__ = ["align_loss", "pair_loss", "qdist"]
