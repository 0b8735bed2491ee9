import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from cryoorient import geometry as geo

SETTINGS = settings(max_examples=50, deadline=None)
F64 = torch.float64

quats = (
    st.lists(st.floats(-1, 1, allow_nan=False, allow_infinity=False), min_size=4, max_size=4)
    .filter(lambda v: sum(x * x for x in v) > 1e-2)
    .map(lambda v: torch.tensor(v, dtype=F64))
)
vectors = st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=3).map(
    lambda v: torch.tensor(v, dtype=F64)
)
angle = st.floats(-180, 180, allow_nan=False)
tilt_angle = st.one_of(st.sampled_from([0.0, 180.0]), st.floats(0, 180, allow_nan=False))


def unit(q):
    return q / q.norm(dim=-1, keepdim=True)


def same_rotation(qa, qb, atol=1e-9):
    """Equal up to sign, elementwise over the batch."""
    return torch.minimum((qa - qb).abs().amax(-1), (qa + qb).abs().amax(-1)) <= atol


def axis_angle(axis, degrees):
    """Scalar-first quaternion from scipy (independent of the module)."""
    rv = np.asarray(axis, float) / np.linalg.norm(axis) * np.deg2rad(degrees)
    x, y, z, w = Rotation.from_rotvec(rv).as_quat()
    return torch.tensor([w, x, y, z], dtype=F64)


def rotation_angle(Ra, Rb):
    c = ((torch.einsum("...ji,...jk->...ik", Ra, Rb).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return torch.arccos(c)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "bad", [torch.zeros(3), torch.zeros(2, 5), torch.tensor(1.0), torch.zeros(2, 4, dtype=torch.long)]
)
def test_quaternion_inputs_are_validated(bad):
    for fn in (geo.quat_normalize, geo.quat_conjugate, geo.quat_to_matrix, geo.quat_to_euler):
        with pytest.raises(ValueError, match=r"\(\.\.\., 4\)|floating"):
            fn(bad)
    with pytest.raises(ValueError):
        geo.quat_multiply(bad, torch.ones(4))
    with pytest.raises(ValueError):
        geo.symmetric_quat_distance(bad, torch.ones(4), "C2")
    with pytest.raises(ValueError):
        geo.to_asymmetric_unit(bad, "C2")


@pytest.mark.parametrize("bad", [torch.zeros(3), torch.zeros(3, 4), torch.zeros(2, 4, 3)])
def test_matrix_inputs_are_validated(bad):
    for fn in (geo.matrix_to_quat, geo.matrix_to_euler):
        with pytest.raises(ValueError, match=r"\(\.\.\., 3, 3\)"):
            fn(bad)


def test_group_tensor_and_vector_inputs_are_validated():
    with pytest.raises(ValueError, match="group"):
        geo.symmetric_quat_distance(torch.ones(4), torch.ones(4), torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        geo.quat_apply(torch.ones(4), torch.ones(4))


# --------------------------------------------------------------------------- quaternion algebra


@SETTINGS
@given(quats)
def test_matrix_is_orthonormal_with_det_one(q):
    R = geo.quat_to_matrix(q)
    torch.testing.assert_close(R @ R.T, torch.eye(3, dtype=F64), atol=1e-12, rtol=0)
    assert abs(torch.linalg.det(R).item() - 1) < 1e-12


@SETTINGS
@given(quats)
def test_quat_matrix_quat_round_trip(q):
    back = geo.matrix_to_quat(geo.quat_to_matrix(q))
    assert back[0] >= 0
    assert same_rotation(back, unit(q), atol=1e-12)


def test_matrix_to_quat_matches_scipy_including_half_turns():
    half_turns = [np.diag(d) for d in ([1, -1, -1], [-1, 1, -1], [-1, -1, 1])]
    for axis, angle in (([1, 1, 0], np.pi), ([1, -2, 3], np.pi), ([0.3, -0.5, 0.8], np.pi - 1e-7)):
        half_turns.append(Rotation.from_rotvec(angle * np.array(axis) / np.linalg.norm(axis)).as_matrix())
    mats = np.concatenate([np.stack(half_turns), Rotation.random(200, random_state=1).as_matrix()])
    q = geo.matrix_to_quat(torch.from_numpy(mats))
    x, y, z, w = Rotation.from_matrix(mats).as_quat().T
    assert same_rotation(q, torch.from_numpy(np.stack([w, x, y, z], -1)), atol=1e-12).all()
    torch.testing.assert_close(geo.quat_to_matrix(q), torch.from_numpy(mats), atol=1e-12, rtol=0)
    assert (q[:, 0] >= 0).all()


@SETTINGS
@given(quats, quats)
def test_quat_multiply_matches_matrix_product(a, b):
    torch.testing.assert_close(
        geo.quat_to_matrix(geo.quat_multiply(a, b)),
        geo.quat_to_matrix(a) @ geo.quat_to_matrix(b),
        atol=1e-12,
        rtol=0,
    )


@SETTINGS
@given(quats, vectors)
def test_quat_apply_matches_matrix(q, v):
    torch.testing.assert_close(geo.quat_apply(q, v), geo.quat_to_matrix(q) @ v, atol=1e-11, rtol=0)


@SETTINGS
@given(quats)
def test_conjugate_is_inverse(q):
    q = geo.quat_normalize(q)
    assert same_rotation(geo.quat_multiply(q, geo.quat_conjugate(q)), torch.tensor([1.0, 0, 0, 0], dtype=F64), 1e-12)


def test_broadcasting_over_leading_dims():
    a = geo.random_quaternions(5, 0, F64).reshape(5, 1, 4)
    b = geo.random_quaternions(3, 1, F64)
    assert geo.quat_multiply(a, b).shape == (5, 3, 4)
    assert geo.quat_distance(a, b).shape == (5, 3)
    assert geo.quat_to_matrix(a).shape == (5, 1, 3, 3)
    assert geo.matrix_to_quat(geo.quat_to_matrix(a)).shape == (5, 1, 4)
    assert geo.quat_apply(a, torch.ones(7, 3, dtype=F64)).shape == (5, 7, 3)
    assert geo.symmetric_quat_distance(a, b, "D2").shape == (5, 3)
    assert geo.to_asymmetric_unit(a, "O").shape == (5, 1, 4)


# --------------------------------------------------------------------------- quat_distance


@SETTINGS
@given(quats, quats)
def test_quat_distance_symmetric_bounded_sign_invariant(a, b):
    d = geo.quat_distance(a, b)
    assert 0 <= d <= math.pi + 1e-12
    assert d == geo.quat_distance(b, a)
    for sa, sb in ((-1, 1), (1, -1), (-1, -1)):
        assert abs(geo.quat_distance(sa * a, sb * b) - d) < 1e-12
    assert geo.quat_distance(a, a) < 1e-7 and geo.quat_distance(a, 3 * a) < 1e-7


@SETTINGS
@given(quats, quats, quats)
def test_quat_distance_bi_invariant_and_triangle(a, b, c):
    d = geo.quat_distance(a, b)
    assert abs(geo.quat_distance(geo.quat_multiply(c, a), geo.quat_multiply(c, b)) - d) < 1e-9
    assert abs(geo.quat_distance(geo.quat_multiply(a, c), geo.quat_multiply(b, c)) - d) < 1e-9
    assert geo.quat_distance(a, c) <= d + geo.quat_distance(b, c) + 1e-9


@SETTINGS
@given(quats, quats)
def test_quat_distance_is_rotation_angle(a, b):
    expected = rotation_angle(geo.quat_to_matrix(a), geo.quat_to_matrix(b))
    assert abs(geo.quat_distance(a, b) - expected) < 1e-6


@pytest.mark.parametrize(
    "qa, qb, d",
    [
        ([0.3, -0.2, 0.5, 0.7], [0.3, -0.2, 0.5, 0.7], 0.0),
        ([1.0, 0, 0, 0], [0, 1.0, 0, 0], math.pi),
        ([0.5, 0.5, -0.5, 0.5], [-0.5, 0.5, 0.5, 0.5], math.pi),
    ],
)
def test_quat_distance_gradient_finite_at_0_and_pi(qa, qb, d):
    a = torch.tensor(qa, dtype=F64, requires_grad=True)
    b = torch.tensor(qb, dtype=F64, requires_grad=True)
    dist = geo.quat_distance(a, b)
    assert abs(dist.item() - d) < 1e-12
    ga, gb = torch.autograd.grad(dist, (a, b))
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()
    q = torch.tensor(qa, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(geo.quat_distance(q, q), q)
    assert torch.isfinite(g).all()


# --------------------------------------------------------------------------- RELION Euler angles


@SETTINGS
@given(angle, tilt_angle, angle)
def test_euler_matrix_is_transposed_scipy_zyz(rot, tilt, psi):
    angles = [torch.tensor(a, dtype=F64) for a in (rot, tilt, psi)]
    A = geo.euler_to_matrix(*angles)
    expected = Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix().T
    torch.testing.assert_close(A, torch.from_numpy(expected), atol=1e-12, rtol=0)
    x, y, z, w = Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_quat()
    q = geo.euler_to_quat(*angles)
    assert same_rotation(q, torch.tensor([w, -x, -y, -z], dtype=F64), atol=1e-12)  # quaternion of A = conj(scipy)


def test_euler_matrix_matches_relion_formula_and_radians():
    rot, tilt, psi = 30.0, 50.0, -70.0
    ca, sa, cb, sb, cg, sg = (f(math.radians(x)) for x in (rot, tilt, psi) for f in (math.cos, math.sin))
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    relion = torch.tensor(
        [
            [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
            [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
            [sc, ss, cb],
        ],
        dtype=F64,
    )
    t = lambda x: torch.tensor(x, dtype=F64)  # noqa: E731
    torch.testing.assert_close(geo.euler_to_matrix(t(rot), t(tilt), t(psi)), relion, atol=1e-14, rtol=0)
    rad = geo.euler_to_matrix(t(math.radians(rot)), t(math.radians(tilt)), t(math.radians(psi)), degrees=False)
    torch.testing.assert_close(rad, relion, atol=1e-14, rtol=0)
    back = geo.matrix_to_euler(relion, degrees=False)
    torch.testing.assert_close(torch.stack(back), torch.tensor([math.radians(x) for x in (rot, tilt, psi)], dtype=F64))


@SETTINGS
@given(angle, tilt_angle, angle)
def test_euler_round_trip_matrices(rot, tilt, psi):
    t = lambda x: torch.tensor(x, dtype=F64)  # noqa: E731
    A = geo.euler_to_matrix(t(rot), t(tilt), t(psi))
    r2, t2, p2 = geo.matrix_to_euler(A)
    assert 0 <= t2 <= 180 and -180 <= r2 <= 180 and -180 <= p2 <= 180
    torch.testing.assert_close(geo.euler_to_matrix(r2, t2, p2), A, atol=1e-5, rtol=0)
    q = geo.euler_to_quat(t(rot), t(tilt), t(psi))
    torch.testing.assert_close(geo.euler_to_matrix(*geo.quat_to_euler(q)), A, atol=1e-5, rtol=0)


@pytest.mark.parametrize("tilt", [0.0, 180.0])
def test_euler_gimbal_lock_like_relion(tilt):
    rot, psi = torch.tensor([25.0, -100.0, 0.0], dtype=F64), torch.tensor([40.0, 170.0, -30.0], dtype=F64)
    A = geo.euler_to_matrix(rot, torch.full_like(rot, tilt), psi)
    r2, t2, p2 = geo.matrix_to_euler(A)
    assert (r2 == 0).all() and (t2 == tilt).all()
    torch.testing.assert_close(geo.euler_to_matrix(r2, t2, p2), A, atol=1e-12, rtol=0)
    # at tilt 0 only rot + psi matters, at tilt 180 only psi - rot
    expected = (psi + rot) if tilt == 0 else (psi - rot)
    torch.testing.assert_close(torch.remainder(p2 - expected + 180, 360) - 180, torch.zeros_like(p2), atol=1e-9, rtol=0)


def test_euler_angles_recovered_in_regular_range():
    rot, tilt, psi = geo.random_euler(500, tilt_range=(1.0, 179.0), generator=3, dtype=F64)
    r2, t2, p2 = geo.matrix_to_euler(geo.euler_to_matrix(rot, tilt, psi))
    for a, b in ((rot, r2), (tilt, t2), (psi, p2)):
        torch.testing.assert_close(torch.remainder(a - b + 180, 360) - 180, torch.zeros_like(a), atol=1e-9, rtol=0)


def test_euler_accepts_python_floats_and_broadcasts():
    A = geo.euler_to_matrix(torch.zeros(4, 1, dtype=F64), 90.0, torch.zeros(3, dtype=F64))
    assert A.shape == (4, 3, 3, 3) and A.dtype == F64
    assert geo.euler_to_matrix(0.0, 0.0, 0.0).dtype == torch.get_default_dtype()


# --------------------------------------------------------------------------- dtypes / devices


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_dtype_is_preserved(dtype):
    q = geo.random_quaternions(8, 0, dtype)
    assert q.dtype == dtype
    R = geo.quat_to_matrix(q)
    outputs = [
        geo.quat_normalize(q), geo.quat_conjugate(q), geo.quat_multiply(q, q), geo.quat_apply(q, q[:, 1:]), R,
        geo.matrix_to_quat(R), *geo.matrix_to_euler(R), geo.euler_to_quat(*geo.quat_to_euler(q)),
        geo.quat_distance(q, q), geo.symmetric_quat_distance(q, q.flip(0), "I"), geo.to_asymmetric_unit(q, "T"),
        geo.symmetry_group("O", dtype=dtype), geo.asymmetric_unit_quaternions(4, "C3", 0, dtype),
        *geo.random_euler(3, dtype=dtype),
    ]
    assert all(o.dtype == dtype for o in outputs)
    if dtype == torch.float32:
        assert same_rotation(geo.matrix_to_quat(R), q, atol=1e-5).all()
        torch.testing.assert_close(geo.euler_to_matrix(*geo.matrix_to_euler(R)), R, atol=1e-5, rtol=0)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    q = geo.random_quaternions(64, 0, F64)
    qc = geo.random_quaternions(64, 0, F64, device="cuda")
    torch.testing.assert_close(qc.cpu(), q)
    for fn in (
        lambda x: geo.matrix_to_quat(geo.quat_to_matrix(x)),
        lambda x: geo.symmetric_quat_distance(x, x.flip(0), "I"),
    ):
        torch.testing.assert_close(fn(qc).cpu(), fn(q))
    torch.testing.assert_close(geo.to_asymmetric_unit(qc, "D5").cpu(), geo.to_asymmetric_unit(q, "D5"))


# --------------------------------------------------------------------------- sampling


def test_random_quaternions_unit_canonical_reproducible():
    q = geo.random_quaternions(1000, 7, F64)
    assert q.shape == (1000, 4)
    torch.testing.assert_close(q.norm(dim=-1), torch.ones(1000, dtype=F64))
    assert (q[:, 0] >= 0).all()
    torch.testing.assert_close(geo.random_quaternions(1000, 7, F64), q)
    torch.testing.assert_close(geo.random_quaternions(1000, torch.Generator().manual_seed(7), F64), q)
    torch.testing.assert_close(geo.random_quaternions(1000, 7, torch.float32), q.float())
    assert not torch.equal(geo.random_quaternions(1000, 8, F64), q)


def test_random_quaternions_are_haar_uniform():
    q = geo.random_quaternions(20000, 0, F64)
    # E[q qᵀ] = I/4 for the Haar measure; the rotation angle has mean π/2 + 2/π.
    torch.testing.assert_close(q.T @ q / len(q), torch.eye(4, dtype=F64) / 4, atol=0.01, rtol=0)
    angle = geo.quat_distance(q, torch.tensor([1.0, 0, 0, 0], dtype=F64))
    assert abs(angle.mean().item() - (math.pi / 2 + 2 / math.pi)) < 0.02


def test_random_euler_ranges_and_seed():
    rot, tilt, psi = geo.random_euler(2000, (-10.0, 20.0), (30.0, 60.0), (100.0, 101.0), generator=5)
    for a, (lo, hi) in ((rot, (-10, 20)), (tilt, (30, 60)), (psi, (100, 101))):
        assert a.shape == (2000,) and lo <= a.min() and a.max() <= hi
        assert a.max() - a.min() > 0.95 * (hi - lo)
    again = geo.random_euler(2000, (-10.0, 20.0), (30.0, 60.0), (100.0, 101.0), generator=5)
    assert all(torch.equal(a, b) for a, b in zip((rot, tilt, psi), again))
    rot, tilt, psi = geo.random_euler(100)
    assert (-180 <= rot).all() and (rot <= 180).all() and (0 <= tilt).all() and (tilt <= 180).all()


# --------------------------------------------------------------------------- point groups

ORDERS = {"C1": 1, "C2": 2, "C7": 7, "c12": 12, "D1": 2, "D2": 4, "D5": 10, "T": 12, "O": 24, "I": 60}
ORDERS.update({f"I{k}": 60 for k in range(1, 5)})


@pytest.mark.parametrize("name, order", ORDERS.items())
def test_symmetry_group_size_closure_no_duplicates(name, order):
    g = geo.symmetry_group(name, dtype=F64)
    assert g.shape == (order, 4)
    torch.testing.assert_close(g[0], torch.tensor([1.0, 0, 0, 0], dtype=F64))
    torch.testing.assert_close(g.norm(dim=-1), torch.ones(order, dtype=F64))
    assert (g[:, 0] >= 0).all()
    overlap = (g @ g.T).abs()
    assert (overlap - torch.eye(order, dtype=F64)).amax() < 1 - 1e-6  # no element twice, even up to sign
    prods = geo.quat_multiply(g[:, None], g[None, :]).reshape(-1, 4)
    assert ((prods @ g.T).abs().amax(-1) > 1 - 1e-12).all()  # closed under products
    assert ((geo.quat_conjugate(g) @ g.T).abs().amax(-1) > 1 - 1e-12).all()  # and inverses


# RELION's symmetries.cpp ``rot_axis fold x y z`` definitions.
RELION_AXES = {
    "C5": [(5, (0, 0, 1))],
    "D3": [(3, (0, 0, 1)), (2, (1, 0, 0))],
    "T": [(3, (0, 0, 1)), (2, (0.0, 0.816496, 0.577350))],
    "O": [(3, (0.5773502, 0.5773502, 0.5773502)), (4, (0, 0, 1))],
    "I": [(2, (0, 0, 1)), (5, (0.525731114, 0, 0.850650807)), (3, (0, 0.356822076, 0.934172364))],
    "I1": [(2, (1, 0, 0)), (5, (0.85065080702670, 0, -0.5257311142635)), (3, (0.9341723640, 0.3568220765, 0))],
    "I2": [(2, (0, 0, 1)), (5, (0.525731114, 0, 0.850650807)), (3, (0, 0.356822076, 0.934172364))],
    "I3": [
        (2, (-0.5257311143, 0, 0.8506508070)),
        (5, (0, 0, 1)),
        (3, (-0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ],
    "I4": [
        (2, (0.5257311143, 0, 0.8506508070)),
        (5, (0.8944271932547096, 0, 0.4472135909903704)),
        (3, (0.4911234778630044, 0.3568220764705179, 0.7946544753759428)),
    ],
}


@pytest.mark.parametrize("name", RELION_AXES)
def test_symmetry_group_uses_relion_axes(name):
    g = geo.symmetry_group(name, dtype=F64)
    for fold, axis in RELION_AXES[name]:
        for k in range(1, fold):
            assert (g @ axis_angle(axis, 360.0 * k / fold)).abs().max() > 1 - 1e-8, (name, fold, axis, k)


@pytest.mark.parametrize("bad", ["", "X", "C0", "D0", "C", "Cx", "I5", "D3h", "O1", 3])
def test_unknown_symmetry_group_raises(bad):
    with pytest.raises(ValueError, match="symmetry group"):
        geo.symmetry_group(bad)


def test_symmetry_group_names_case_and_space_insensitive():
    torch.testing.assert_close(geo.symmetry_group(" d4 "), geo.symmetry_group("D4"))
    torch.testing.assert_close(geo.symmetry_group("i"), geo.symmetry_group("I2"))


# --------------------------------------------------------------------------- symmetry-aware distance


@pytest.mark.parametrize("name", ["C4", "D3", "T", "O", "I"])
def test_symmetric_distance_convention_matches_rotating_a_symmetric_object(name):
    g = geo.symmetry_group(name, dtype=F64)
    # A symmetric object: the orbit of a generic point under the group (x' = R_g x).
    points = geo.quat_apply(g, torch.tensor([0.3, -0.7, 1.1], dtype=F64))

    def placed(q):  # the object in orientation q
        return geo.quat_apply(q, points)

    def set_distance(p1, p2):
        return torch.cdist(p1, p2, compute_mode="donot_use_mm_for_euclid_dist").amin(-1).amax().item()

    q = geo.random_quaternions(1, 11, F64)[0]
    for h in g[1:]:
        right = geo.quat_multiply(q, h)
        assert set_distance(placed(right), placed(q)) < 1e-9  # q·g: indistinguishable
        assert geo.symmetric_quat_distance(q, right, g) < 1e-7
        assert geo.quat_distance(q, right) > 0.1
        left = geo.quat_multiply(h, q)
        assert set_distance(placed(left), placed(q)) > 1e-3  # g·q: a different pose


@SETTINGS
@given(quats, quats, st.sampled_from(["C1", "C3", "D2", "T", "O", "I"]), st.integers(0, 59))
def test_symmetric_distance_properties(a, b, name, k):
    g = geo.symmetry_group(name, dtype=F64)
    h = g[k % len(g)]
    d = geo.symmetric_quat_distance(a, b, name)
    assert 0 <= d <= geo.quat_distance(a, b) + 1e-12
    assert abs(geo.symmetric_quat_distance(a, geo.quat_multiply(b, h), g) - d) < 1e-9
    assert abs(geo.symmetric_quat_distance(geo.quat_multiply(a, h), b, g) - d) < 1e-9
    assert abs(geo.symmetric_quat_distance(b, a, g) - d) < 1e-9
    if name == "C1":
        assert abs(d - geo.quat_distance(a, b)) < 1e-12


# --------------------------------------------------------------------------- asymmetric unit


@pytest.mark.parametrize("name", ["C1", "C5", "D3", "T", "O", "I3"])
def test_asymmetric_unit_representatives(name):
    g = geo.symmetry_group(name, dtype=F64)
    q = geo.random_quaternions(300, 2, F64)
    rep = geo.to_asymmetric_unit(q, name)
    assert (rep[:, 0] >= 0).all()
    torch.testing.assert_close(rep.norm(dim=-1), torch.ones(300, dtype=F64))
    # rep is in the coset {q·g}
    mates = geo.quat_multiply(q[:, None], g)
    assert (((mates * rep[:, None]).sum(-1)).abs().amax(-1) > 1 - 1e-12).all()
    # idempotent
    assert same_rotation(geo.to_asymmetric_unit(rep, g), rep, 1e-12).all()
    # constant on cosets, whichever member we start from
    shuffled = geo.quat_multiply(q, g[torch.arange(300) % len(g)])
    assert same_rotation(geo.to_asymmetric_unit(-shuffled, g), rep, 1e-12).all()
    # rep is the coset member nearest the identity (Dirichlet domain)
    assert (rep[:, :1] >= geo.quat_multiply(rep[:, None], g)[..., 0].abs() - 1e-12).all()


@pytest.mark.parametrize("name, order", [("C4", 4), ("D3", 6), ("O", 24)])
def test_asymmetric_unit_is_a_fundamental_domain(name, order):
    # A uniform sample lands in the asymmetric unit with probability 1/|G|.
    q = geo.random_quaternions(6000, 4, F64)
    inside = same_rotation(geo.to_asymmetric_unit(q, name), q, 1e-12).double().mean().item()
    assert abs(inside - 1 / order) < 4 * math.sqrt((1 / order) / 6000)


def test_asymmetric_unit_quaternions():
    q = geo.asymmetric_unit_quaternions(500, "D7", generator=9, dtype=F64)
    assert q.shape == (500, 4)
    assert same_rotation(geo.to_asymmetric_unit(q, "D7"), q, 1e-12).all()
    torch.testing.assert_close(q, geo.to_asymmetric_unit(geo.random_quaternions(500, 9, F64), "D7"))
    torch.testing.assert_close(geo.asymmetric_unit_quaternions(500, "D7", 9, F64), q)
