import pytest
import torch

from cryoorient.orientations.frame import resolve_frame
from cryoorient.geometry import quat_conjugate, quat_distance, quat_multiply, random_quaternions
from cryoorient.imaging.phantom import default_density
from cryoorient.imaging.project import FourierProjector


@pytest.fixture(scope="module")
def images_and_truth():
    vol = torch.from_numpy(default_density(box_size=24, voxel_size=5.5, resolution=11.0))
    q = random_quaternions(200, generator=4)
    return FourierProjector(vol, pad=2.0, interpolation="linear").images(q), q


@pytest.mark.parametrize("conjugated", [False, True])
def test_resolve_frame_removes_the_left_factor_and_conjugation(images_and_truth, conjugated):
    images, q = images_and_truth
    a = random_quaternions(1, generator=9)[0]
    b = random_quaternions(1, generator=10)[0]
    # what distance-based recovery may return: a·q·b or a·conj(q)·b (paper eq. 5's O(4) ambiguity)
    base = quat_conjugate(q) if conjugated else q
    q_hat = quat_multiply(quat_multiply(a.expand_as(q), base), b.expand_as(q))
    res = resolve_frame(images, q_hat, n_images=200, size=16, n_candidates=150, local=90)
    assert res.conjugated == conjugated
    # consistent with the images: q' = q·c for one map rotation c shared by every particle, or
    # q' = z_π·q·c, the orientations of the mirror-image map (projections cannot tell the hand)
    z_pi = torch.tensor([0.0, 0.0, 0.0, 1.0]).expand_as(q)
    spread = []
    for candidate in (res.quaternions, quat_multiply(z_pi, res.quaternions)):
        c = quat_multiply(quat_conjugate(q), candidate)
        spread.append(float(quat_distance(c, c[:1].expand_as(c)).max()))
    assert min(spread) < 0.1, spread
    assert max(spread) > 1.0  # and the two hands are really different sets
    assert res.score > res.score_uncorrected


def test_resolve_frame_bad_inputs(images_and_truth):
    images, q = images_and_truth
    with pytest.raises(ValueError, match="orientations"):
        resolve_frame(images, q[:10])
    with pytest.raises(ValueError, match="at least 20"):
        resolve_frame(images[:10], q[:10])
