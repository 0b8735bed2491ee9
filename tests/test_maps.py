import numpy as np
import pytest
import torch

from cryoorient.geometry import matrix_to_quat, quat_distance, quat_to_matrix, random_quaternions
from cryoorient.maps.transforms import align_map, lowpass, mirror, rotate_map
from cryoorient.imaging.phantom import default_density


@pytest.fixture(scope="module")
def volume():
    return torch.from_numpy(default_density(box_size=32, voxel_size=3.5, resolution=10.0))


def test_rotate_map_moves_density_from_r_to_Rr():
    n = 21
    v = torch.zeros(n, n, n)
    v[10, 10, 15] = 1.0  # (x, y, z) = (5, 0, 0) relative to the centre
    Rz90 = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])  # x -> y
    out = rotate_map(v, Rz90)
    z, y, x = np.unravel_index(int(out.argmax()), out.shape)
    assert (x - 10, y - 10, z - 10) == (0, 5, 0)


def test_mirror_is_an_involution_and_changes_hand(volume):
    torch.testing.assert_close(mirror(mirror(volume)), volume)
    assert not torch.allclose(mirror(volume), volume)


@pytest.mark.parametrize("mirrored", [False, True])
def test_align_map_finds_rotation_and_hand(volume, mirrored):
    R = quat_to_matrix(random_quaternions(1, generator=3))[0]
    moved = rotate_map(mirror(volume) if mirrored else volume, R)
    res = align_map(moved, volume, n_search=1000, refine_size=32)
    assert res.mirrored == mirrored
    assert res.correlation > 0.97
    if not mirrored:
        assert float(quat_distance(matrix_to_quat(res.rotation), matrix_to_quat(R.T))) < 0.05


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
