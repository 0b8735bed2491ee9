"""cryoorient's compiled kernels as PyTorch ops (eager, autograd, torch.compile; CPU and CUDA).

Each op validates its inputs with clear errors and has a plain-PyTorch reference of
the same name in ``cryoorient.ops._torch_impl``.
"""

from .align_loss import align_loss, align_loss_and_grad
from .allpairs import DistanceCache, allpairs_distance_cache, allpairs_loss, allpairs_loss_cached
from .angle_sums import angle_sums
from .feature_knn import feature_knn
from .pair_loss import pair_loss, pair_loss_and_grad
from .qdist import qdist
from .sampled_pairs import sampled_feature_pair_loss, sampled_pairs

__all__ = [
    "DistanceCache",
    "align_loss",
    "align_loss_and_grad",
    "allpairs_distance_cache",
    "allpairs_loss",
    "allpairs_loss_cached",
    "angle_sums",
    "feature_knn",
    "pair_loss",
    "pair_loss_and_grad",
    "qdist",
    "sampled_feature_pair_loss",
    "sampled_pairs",
]
