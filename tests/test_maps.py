import math

import numpy as np
import pytest
import torch

from cryoorient.geometry import matrix_to_quat, quat_distance, quat_to_matrix, random_quaternions
from cryoorient.imaging.noise import add_white_noise
from cryoorient.imaging.phantom import default_density
from cryoorient.imaging.project import FourierProjector
from cryoorient.io import density_from_model
from cryoorient.maps.fsc import fsc
from cryoorient.maps.reconstruct import reconstruct
from cryoorient.io import centre_of_mass
from cryoorient.maps.transforms import (align_map, density_centre, lowpass, mirror, particle_radius, rotate_map,
                                         shift_map, soft_sphere)

# the maps that fill their box (diameter ~100 %) touch it by design: their renderers warn of it
pytestmark = pytest.mark.filterwarnings("ignore:model density extends beyond:RuntimeWarning")

J = torch.diag(torch.tensor([1.0, 1.0, -1.0]))
SMALL = 20  # box of the maps that the particle (diameter ~18 voxels) fills; padded to 36 (50 %) and 90 (20 %)
# library models: voxel size (Å) giving a particle diameter (twice the largest atom distance from the centre)
# of ~18 voxels
MODELS = {"1aki": 2.9, "5h73": 3.45, "4p5j": 5.1}


@pytest.fixture(scope="module")
def volume():
    return torch.from_numpy(default_density(box_size=32, voxel_size=3.5, resolution=10.0))


@pytest.fixture(scope="module")
def phantom():
    """The built-in phantom filling a 20-voxel box (diameter ~18 voxels)."""
    return torch.from_numpy(default_density(box_size=SMALL, voxel_size=3.5, resolution=8.75))


def _padded(v: torch.Tensor, n: int) -> torch.Tensor:
    """``v`` in the centre of an n³ box of zeros (centre voxel n//2 kept)."""
    k = v.shape[0]
    out = torch.zeros(n, n, n)
    o = n // 2 - k // 2
    out[o:o + k, o:o + k, o:o + k] = v
    return out


def _angle_deg(R1: torch.Tensor, R2: torch.Tensor) -> float:
    return math.degrees(float(quat_distance(matrix_to_quat(R1.double()), matrix_to_quat(R2.double()))))


def _check_planted(reference: torch.Tensor, seed: int, mirrored: bool, **options):
    """Align a planted rotation (and mirror) of ``reference`` back onto it: the rotation, the hand
    and the two hands' correlations."""
    R = quat_to_matrix(random_quaternions(1, generator=seed))[0]
    moved = rotate_map(mirror(reference) if mirrored else reference, R)
    res = align_map(moved, reference, **options)
    # rotate_map(rotate_map(V, R), Rᵀ) = V; mirror(rotate_map(mirror(V), R)) = rotate_map(V, J R J)
    expected = J @ R.T @ J if mirrored else R.T
    assert res.mirrored == mirrored
    assert _angle_deg(res.rotation, expected) < 2.0
    right, wrong = res.correlation_same, res.correlation_mirror
    if mirrored:
        right, wrong = wrong, right
    assert res.correlation == right > 0.95 and right > wrong + 0.03
    torch.testing.assert_close(res.aligned, rotate_map(mirror(moved) if mirrored else moved, res.rotation))


def test_rotate_map_moves_density_from_r_to_Rr():
    n = 21
    v = torch.zeros(n, n, n)
    v[10, 10, 15] = 1.0  # (x, y, z) = (5, 0, 0) relative to the centre
    Rz90 = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # x -> y
    out = rotate_map(v, Rz90)
    z, y, x = np.unravel_index(int(out.argmax()), out.shape)
    assert (x - 10, y - 10, z - 10) == (0, 5, 0)


def test_rotate_map_interpolates_without_blurring(volume):
    torch.testing.assert_close(rotate_map(volume, torch.eye(3)), volume, atol=1e-5 * float(volume.abs().max()), rtol=0)
    R = quat_to_matrix(random_quaternions(1, generator=4))[0]
    back = rotate_map(rotate_map(volume, R), R.T)
    # there and back: ~5 % of the map's norm lost (trilinear reading on the map's own grid: 16 %)
    assert float((back - volume).norm() / volume.norm()) < 0.08


def test_mirror_is_an_involution_and_changes_hand(volume):
    torch.testing.assert_close(mirror(mirror(volume)), volume)
    assert not torch.allclose(mirror(volume), volume)
    n = volume.shape[0]
    torch.testing.assert_close(mirror(volume)[n // 2 + 3], volume[n // 2 - 3])  # z -> -z about the centre


def test_particle_radius_follows_the_particle_not_the_box(phantom):
    n = 48
    ax = torch.arange(n, dtype=torch.float32) - n // 2
    r = torch.sqrt(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + ax[None, None, :] ** 2)
    ball = torch.sigmoid((10 - r) * 2)  # a soft ball of radius 10 voxels
    assert 9 < particle_radius(ball) < 11.5
    noisy = ball + 0.2 * torch.randn(ball.shape, generator=torch.Generator().manual_seed(0))
    assert 9 < particle_radius(noisy) < 12
    radii = [particle_radius(_padded(phantom, n)) for n in (SMALL, 36, 90)]
    assert 8 < radii[0] < 12 and max(radii) - min(radii) < 0.5
    assert particle_radius(torch.zeros(16, 16, 16)) == 8


@pytest.mark.parametrize("box,mirrored", [(SMALL, False), (SMALL, True), (36, False), (36, True),
                                       (90, False), (90, True)])
def test_align_map_phantom_at_any_particle_size(phantom, box, mirrored):
    # particle diameter ~90 %, 50 % and 20 % of the box: the search samples the particle, not the box
    _check_planted(_padded(phantom, box), seed=box + mirrored, mirrored=mirrored)


def test_align_map_low_resolution_map(phantom):
    # 25 Å on 3.5 Å voxels, given: the search blurs to it but still samples the particle finely
    lowres = lowpass(_padded(phantom, 36), 3.5, 25.0)
    _check_planted(lowres, seed=7, mirrored=True, voxel_size=3.5, resolution=25.0)


@pytest.mark.parametrize("name,box,mirrored", [("1aki", SMALL, True), ("1aki", 90, False), ("5h73", 36, True),
                                               ("5h73", SMALL, False), ("4p5j", 90, True), ("4p5j", 36, False)])
def test_align_map_library_models(shared_data, name, box, mirrored):
    path = shared_data / "structures" / f"{name}.cif"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    voxel = MODELS[name]
    small = torch.from_numpy(density_from_model(path, SMALL, voxel, 2.5 * voxel))
    _check_planted(_padded(small, box), seed=len(name) + box, mirrored=mirrored)


def _noisy_projections(volume, count, seed):
    q = random_quaternions(count, generator=seed)
    images = FourierProjector(volume, interpolation="linear").images(q)
    return add_white_noise(images, 2.0 * float(images.var()), torch.Generator().manual_seed(seed)), quat_to_matrix(q)


def test_two_reconstructions_in_different_frames_and_hands_align(volume):
    # two halves of one noisy data set; the second half's orientations are those of the mirror
    # image of the map turned by B (A -> J·A·J·B), so its reconstruction is that map
    images, A = _noisy_projections(volume, 1000, seed=5)
    B = quat_to_matrix(random_quaternions(1, generator=9))[0]
    A2 = J @ A[1::2] @ J @ B
    first = reconstruct(images[::2], A[::2], progress=False)
    second = reconstruct(images[1::2], A2, progress=False)
    res = align_map(second, first)
    assert res.mirrored and res.correlation_mirror > res.correlation_same + 0.05
    assert _angle_deg(res.rotation, J @ B @ J) < 2.0
    # the second half's orientations brought into the first map's frame (MapAlignment's docstring)
    back = J @ A2 @ J @ res.rotation.T
    assert torch.rad2deg(quat_distance(matrix_to_quat(back.double()), matrix_to_quat(A[1::2].double()))).max() < 2.0


def test_alignment_keeps_the_fsc_of_a_map_already_in_frame(volume):
    # a noisy reconstruction from the true orientations is already in the truth's frame: the
    # alignment must find the identity and leave its FSC with the truth as it was
    images, A = _noisy_projections(volume, 1000, seed=2)
    recon = reconstruct(images, A, progress=False)
    res = align_map(recon, volume)
    assert not res.mirrored and _angle_deg(res.rotation, torch.eye(3)) < 0.5
    before, after = fsc(recon, volume, 3.5), fsc(res.aligned, volume, 3.5)
    for threshold in (0.5, 0.143):
        assert after.resolution(threshold) == pytest.approx(before.resolution(threshold), rel=0.02)
    assert np.abs(after.fsc - before.fsc).max() < 0.02


def test_align_map_rejects_maps_of_different_size(volume):
    with pytest.raises(ValueError, match="differ in size"):
        align_map(volume, volume[:-1, :-1, :-1])
    with pytest.raises(ValueError, match="n_search"):
        align_map(volume, volume, n_search=0)


def test_lowpass_removes_high_frequencies(volume):
    lp = lowpass(volume, voxel_size=3.5, resolution=20.0)
    f = torch.fft.rfftn(lp).abs()
    n = volume.shape[0]
    k = torch.fft.fftfreq(n, d=3.5)
    kr = torch.fft.rfftfreq(n, d=3.5)
    r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kr[None, None, :] ** 2)
    assert f[r > 1 / 20 + 2 / (n * 3.5)].max() < 1e-4 * f.max()
    with pytest.raises(ValueError, match="cubic"):
        lowpass(volume[:-1], 3.5, 20.0)


def test_shift_map_moves_density_by_t():
    vol = torch.zeros(16, 16, 16)
    vol[9, 5, 11] = 1.0  # [z, y, x]: at (3, -3, 1) voxels from the centre
    moved = shift_map(vol, torch.tensor([-3.0, 3.0, -1.0]))
    assert np.allclose(centre_of_mass(moved.numpy(), 1.0), 0.0, atol=1e-5) and moved[8, 8, 8] > 0.99
    ax = torch.arange(16.0) - 8
    blob = torch.exp(-(ax[:, None, None] ** 2 + ax[None, :, None] ** 2 + (ax[None, None, :] - 1) ** 2) / 4)
    half = shift_map(blob, torch.tensor([0.5, 0.0, 0.0]))  # between voxels: the sum stays, the centre moves
    assert math.isclose(float(half.sum()), float(blob.sum()), rel_tol=1e-5)
    assert np.allclose(centre_of_mass(half.numpy(), 1.0), [1.5, 0.0, 0.0], atol=1e-3)


def test_density_centre_finds_the_particle_not_the_noise(volume):
    t = torch.tensor([2.5, -1.0, 3.0])
    g = torch.Generator().manual_seed(0)
    noisy = shift_map(volume, t) + 0.02 * float(volume.max()) * torch.randn(volume.shape, generator=g)
    assert torch.allclose(density_centre(noisy) - density_centre(volume), t.double(), atol=0.3)
    assert torch.equal(density_centre(torch.full((8, 8, 8), 2.0)), torch.zeros(3, dtype=torch.float64))  # flat


def test_soft_sphere_is_one_inside_zero_outside_and_half_mid_edge():
    mask = soft_sphere(32, 6.0, 4.0)
    assert mask.shape == (32, 32, 32) and mask.dtype == torch.float32
    assert mask[16, 16, 16] == 1.0 and mask[16, 16, 22] == 1.0  # the centre, and the radius itself (on x)
    assert math.isclose(float(mask[16, 24, 16]), 0.5, abs_tol=1e-6)  # 8 voxels on y: the middle of the edge
    assert mask[16, 16, 26] == 0.0 and mask[0, 0, 0] == 0.0  # beyond radius + edge
    assert torch.equal(mask, mask.flip(0).roll(1, 0))  # symmetric about voxel 16 along z
