"""angle_sums: a projection-matching search's posterior weights summed over the in-plane angles (CPU and CUDA kernels).

The global search's exploration draws each particle's orientation and shift offset from its posterior over
S offsets × J directions × L in-plane angles (:meth:`cryoorient.orientations.polar_matching.PolarSearch.sample`):
first the pair (offset, direction) from the weights summed over the angles, then the angle. Written as tensor
operations, the weights of every candidate are stored and passed over several times; the kernel reads each
numerator once and keeps only the sums.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._ext import FLOAT_CODES, _C, launch_args
from ._checks import FLOATS, check_same_device, check_tensor
from ._cupy import cupy_io
from ._direct import direct


def angle_weights(num: Tensor, den: Tensor, scale: Tensor, bias: Tensor, floor: float) -> Tensor:
    """exp(max(scale · max(num / den, 0)² + bias, −floor)), elementwise with broadcasting: the summand of
    :func:`angle_sums` (plain PyTorch, for a few candidates; not an op)."""
    return (num / den).clamp_min(0).square().mul(scale).add(bias).clamp_min(-floor).exp()


@cupy_io
def angle_sums(num: Tensor, den: Tensor, scale: Tensor, bias: Tensor, floor: float) -> Tensor:
    """Σ_l exp(max(scale[r] · max(num[r, j, l] / den[r, j], 0)² + bias[r], −floor)): (R, J).

    ``num`` (R, J, L): the normalised cross-correlations' numerators of R rows (a particle at a shift offset)
    with J directions at L in-plane angles (the angles last, as an inverse FFT over them gives them);
    ``den`` (R, J) > 0: their norms (num / den is the NCC); ``scale``, ``bias`` (R,): the log-posterior
    k (c² − c_max²) + prior of a row as scale·c² + bias (c = max(NCC, 0)); ``floor`` >= 0: exponents below −floor
    count as −floor. float32 or float64, one device. Not differentiable.
    """
    num = check_tensor("num", num, FLOATS, (None, None, None))
    R, J, L = num.shape
    den = check_tensor("den", den, (num.dtype,), (R, J))
    scale = check_tensor("scale", scale, (num.dtype,), (R,))
    bias = check_tensor("bias", bias, (num.dtype,), (R,))
    check_same_device(num=num, den=den, scale=scale, bias=bias)
    if not float(floor) >= 0:
        raise ValueError(f"floor must be >= 0; got {floor!r}")
    return (_angle_sums_impl if direct(num, den, scale, bias) else _angle_sums)(num, den, scale, bias, float(floor))


def _angle_sums_impl(num: Tensor, den: Tensor, scale: Tensor, bias: Tensor, floor: float) -> Tensor:
    R, J, L = num.shape
    out = num.new_empty(R, J)
    device, stream, threads = launch_args(num)
    _C.angle_sums(num.data_ptr(), den.data_ptr(), scale.data_ptr(), bias.data_ptr(), floor, out.data_ptr(), R, J, L,
                  FLOAT_CODES[num.dtype], device, stream, threads)
    return out


_angle_sums = torch.library.custom_op("cryoorient::angle_sums", _angle_sums_impl, mutates_args=())


@_angle_sums.register_fake
def _(num: Tensor, den: Tensor, scale: Tensor, bias: Tensor, floor: float) -> Tensor:
    return num.new_empty(num.shape[0], num.shape[1])
