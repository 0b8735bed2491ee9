import math

import pytest
import torch

from cryoorient import ops
from cryoorient.ops import _torch_impl as ref
from cryoorient.ops.angle_sums import angle_weights


def _problem(R, J, L, dtype, device, seed=0):
    """Numerators and norms of NCCs in [−1, 1], scale and bias as the global search's draws make them: the
    exponent k (c² − c_max²) + prior, at most 0, many candidates below the floor."""
    g = torch.Generator().manual_seed(seed)
    den = torch.rand(R, J, generator=g, dtype=torch.float64) + 0.5
    ncc = torch.rand(R, J, L, generator=g, dtype=torch.float64) * 1.6 - 0.6
    scale = torch.rand(R, generator=g, dtype=torch.float64) * 400 + 10
    bias = -scale - torch.rand(R, generator=g, dtype=torch.float64) * 3
    return [x.to(dtype).to(device) for x in (ncc * den[..., None], den, scale, bias)]


def test_matches_reference_float64(device):
    num, den, scale, bias = _problem(50, 123, 37, torch.float64, device)
    out = ops.angle_sums(num, den, scale, bias, 60.0)
    torch.testing.assert_close(out, ref.angle_sums(num, den, scale, bias, 60.0), rtol=1e-12, atol=0)


def _float32_errors(args):
    """Largest relative errors of the op and of the reference in float32 against the float64 sums of the same
    float32 inputs."""
    exact = ref.angle_sums(*(x.double() for x in args), 60.0)
    kernel = (ops.angle_sums(*args, 60.0).double() / exact - 1).abs().max()
    reference = (ref.angle_sums(*args, 60.0).double() / exact - 1).abs().max()
    return float(kernel), float(reference)


def test_float32_is_as_accurate_as_the_reference(device):
    """Against the float64 sums: the kernel's error (its exp's, its one division per column) at most twice that of
    the reference in float32 plus 1e-5 relative (the exponent k (c² − c_max²) cancels: ~1e−5 either way)."""
    kernel, reference = _float32_errors(_problem(81, 300, 88, torch.float32, device, seed=1))
    assert kernel <= 2 * reference + 1e-5, (kernel, reference)


def test_closed_forms():
    """Constant NCC c over L angles: L·exp(scale·c² + bias); negative NCC counts as 0; the floor; exp over the
    whole float range (the CPU's own exp) within 2e-7 relative."""
    L = 5
    num = torch.tensor([0.5, -0.3, 0.9]).view(1, 3, 1).repeat(1, 1, L)  # (R = 1, J = 3, L)
    out = ops.angle_sums(num, torch.ones(1, 3), torch.tensor([4.0]), torch.tensor([-3.0]), 2.5)[0]
    expected = L * torch.tensor([math.exp(4 * 0.25 - 3), math.exp(-2.5), math.exp(4 * 0.81 - 3)])
    torch.testing.assert_close(out, expected.float(), rtol=1e-6, atol=0)
    x = torch.linspace(-87, 88, 20001, dtype=torch.float64)
    e = ops.angle_sums(torch.zeros(len(x), 1, 1), torch.ones(len(x), 1), torch.zeros(len(x)), x.float(), 100.0)
    assert float((e[:, 0].double() / torch.exp(x.float().double()) - 1).abs().max()) < 2e-7


@pytest.mark.cuda
def test_cuda_at_the_exploration_size():
    """A batch of the exploration's size on the GPU (200 rows × 2,700 directions × 152 angles: many blocks, the
    grid-stride loop), as accurate as the reference; the CPU's sums agree within both errors."""
    args = [x.cuda() for x in _problem(200, 2700, 152, torch.float32, "cpu", seed=3)]
    kernel, reference = _float32_errors(args)
    assert kernel <= 2 * reference + 1e-5, (kernel, reference)
    cpu = ops.angle_sums(*(x.cpu() for x in args), 60.0)
    torch.testing.assert_close(ops.angle_sums(*args, 60.0).cpu(), cpu, rtol=2 * (kernel + reference) + 2e-5, atol=0)


def test_torch_compile():
    args = _problem(4, 7, 9, torch.float32, "cpu")
    f = torch.compile(lambda *a: ops.angle_sums(*a, 60.0).sum(0), fullgraph=True)
    torch.testing.assert_close(f(*args), ops.angle_sums(*args, 60.0).sum(0), rtol=1e-6, atol=0)  # the op, traced


def test_weights_are_the_summands():
    num, den, scale, bias = _problem(3, 4, 6, torch.float64, "cpu")
    w = angle_weights(num, den[..., None], scale[:, None, None], bias[:, None, None], 60.0)
    torch.testing.assert_close(w.sum(-1), ops.angle_sums(num, den, scale, bias, 60.0), rtol=1e-12, atol=0)


def test_bad_inputs():
    num, den, scale, bias = _problem(2, 4, 3, torch.float32, "cpu")
    with pytest.raises(ValueError, match="den must have shape 2×4"):
        ops.angle_sums(num, den.T, scale, bias, 60.0)  # den (4, 2)
    with pytest.raises(TypeError, match="bias must have dtype float32"):
        ops.angle_sums(num, den, scale, bias.double(), 60.0)
    with pytest.raises(ValueError, match="floor must be >= 0"):
        ops.angle_sums(num, den, scale, bias, -1.0)
    with pytest.raises(ValueError, match="num must have shape"):
        ops.angle_sums(num[0], den, scale, bias, 60.0)
    with pytest.raises(ValueError, match="one device|same device|device"):
        ops.angle_sums(num, den, scale.to("meta"), bias, 60.0)
