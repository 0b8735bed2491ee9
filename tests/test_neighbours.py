"""cryoorient.learning.neighbours: neighbour precision on planted neighbour lists and on rotational_neighbors."""

import math

import pytest
import torch

from _blobs import BlobRenderer
from cryoorient.geometry import matrix_to_quat, quat_to_matrix, random_quaternions
from cryoorient.learning.neighbours import (neighbour_precision, node_directions, true_neighbours,
                                            viewing_directions)
from cryoorient.orientations.abinitio import rotational_neighbors

MIRROR = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))  # node P + i: diag(1, -1, -1)·A_i


def test_viewing_direction_is_third_row_and_mirror_nodes_look_the_other_way():
    q = random_quaternions(5, generator=0, dtype=torch.float64)
    v = viewing_directions(q)
    assert torch.allclose(v, quat_to_matrix(q)[:, 2])
    assert torch.allclose(viewing_directions(matrix_to_quat(MIRROR @ quat_to_matrix(q))), -v)
    nodes = node_directions(q, reference=[3, 1])
    assert torch.allclose(nodes, torch.stack([v[3], v[1], -v[3], -v[1]]))


def test_perfect_list_scores_one():
    """The true 10 nearest nodes all lie within 10° once views are dense (P·(1 − cos 10°) ≈ 45 > 10)."""
    q = random_quaternions(3000, generator=1, dtype=torch.float64)
    assert neighbour_precision(true_neighbours(q, 10), q) == 1.0
    ref = torch.arange(0, 3000, 1)  # explicit reference, same nodes
    assert neighbour_precision(true_neighbours(q, 10, reference=ref), q, reference=ref) == 1.0
    index = torch.cat([true_neighbours(q, 10), true_neighbours(q, 10)])  # (2P, K): mirror rows ignored
    assert neighbour_precision(index, q) == 1.0


def test_random_list_scores_the_cap_fraction():
    """Each random node's direction (±v of a uniform view) is uniform on the sphere: chance is the
    cap fraction (1 − cos 10°)/2 = 0.00760 (not 1 − cos 10°: a mirror node counts only as −v)."""
    P, k = 20000, 10
    q = random_quaternions(P, generator=2, dtype=torch.float64)
    index = torch.randint(0, 2 * P, (P, k), generator=torch.Generator().manual_seed(3))
    chance = (1 - math.cos(math.radians(10))) / 2
    sd = math.sqrt(chance * (1 - chance) / (P * k))
    assert neighbour_precision(index, q) == pytest.approx(chance, abs=4 * sd)


def test_mirrored_matches_count_as_the_mirror_view():
    """Image 1 is the mirror image of image 0 (A_1 = diag(1, −1, −1)·A_0, viewing direction −v_0): its
    mirror node P + 1 looks along v_0 and is a true neighbour of image 0; its plain node 1 is not."""
    P = 6
    q = random_quaternions(P, generator=4, dtype=torch.float64)
    q[1] = matrix_to_quat(MIRROR @ quat_to_matrix(q[0]))
    hit = neighbour_precision(torch.tensor([[P + 1]] + [[j] for j in range(1, P)]), q, k=1, per_image=True)
    miss = neighbour_precision(torch.tensor([[1]] + [[j] for j in range(1, P)]), q, k=1, per_image=True)
    assert hit[0] == 1.0 and miss[0] == 0.0
    assert bool((hit[1:] == 1.0).all())  # rows j >= 1 list themselves: within 0°


def test_rotational_neighbors_on_clean_images():
    """The hand-made comparison finds true neighbours on clean projections; read with the mirrors
    swapped (node r <-> P + r) its lists fall to chance."""
    P = 400
    q = random_quaternions(P, generator=1, dtype=torch.float64)
    images = BlobRenderer(size=32, seed=3)(q, torch.Generator().manual_seed(0))
    index, _, _ = rotational_neighbors(images, noise_samples=2000)
    assert neighbour_precision(index, q, within_deg=20) > 0.85
    assert neighbour_precision((index + P) % (2 * P), q, within_deg=20) < 0.1
    assert neighbour_precision(true_neighbours(q), q, within_deg=20) == 1.0


def test_refusals():
    q = random_quaternions(10, generator=0, dtype=torch.float64)
    good = torch.zeros(10, 3, dtype=torch.long) + 1
    with pytest.raises(ValueError, match="index must be"):
        neighbour_precision(good[:7], q)
    with pytest.raises(ValueError, match="k must be"):
        neighbour_precision(good, q, k=4)
    with pytest.raises(ValueError, match="node indices"):
        neighbour_precision(good + 30, q, k=3)
    with pytest.raises(ValueError, match="within_deg"):
        neighbour_precision(good, q, k=3, within_deg=0)
    with pytest.raises(ValueError, match="reference"):
        node_directions(q, reference=[0, 0])
    with pytest.raises(ValueError, match="k must be"):
        true_neighbours(q, 19)
