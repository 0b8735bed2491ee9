import numpy as np

from cryoorient.geometry import random_quaternions, quat_to_matrix
from cryoorient.io import centre_of_mass
from cryoorient.imaging.phantom import default_density, pseudo_molecule


def test_default_density_is_deterministic_centred_and_positive():
    a = default_density(box_size=48, voxel_size=2.5, resolution=8.0)
    b = default_density(box_size=48, voxel_size=2.5, resolution=8.0)
    assert a.shape == (48, 48, 48) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert a.min() >= 0 and a.max() > 0
    np.testing.assert_allclose(centre_of_mass(a, 2.5), 0.0, atol=1.25)  # within half a voxel


def test_pseudo_molecule_is_chain_like_and_has_no_symmetry():
    xyz, w = pseudo_molecule(seed=0)
    from cryoorient.imaging.phantom import DOMAINS, RADII

    chain = xyz[:500]
    steps = np.linalg.norm(np.diff(chain, axis=0), axis=1)
    assert np.sum(np.abs(steps - 3.8) < 1e-9) == 500 - len(DOMAINS)  # one chain break between domains
    in_domain = np.linalg.norm(chain[:, None] - DOMAINS[None], axis=2) <= RADII + 1e-9
    assert in_domain.any(1).mean() > 0.95 and (in_domain.sum(0) > 50).all()
    centred = xyz - np.average(xyz, axis=0, weights=w)
    # No rotation or reflection of 200 random ones maps the atoms onto themselves.
    R = quat_to_matrix(random_quaternions(200, generator=1, dtype=__import__("torch").float64)).numpy()
    for M in np.concatenate([R, -R]):
        moved = centred @ M.T
        d = np.linalg.norm(moved[:, None] - centred[None], axis=2).min(1)
        assert np.median(d) > 1.0
    assert not np.array_equal(xyz, pseudo_molecule(seed=1)[0])
