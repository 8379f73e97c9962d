"""soma.peft.svd: the minor/principal subspace against a float64 ``torch.linalg.svd``."""
import pytest
import torch

from soma.peft import minor_components
from soma.peft import svd as svd_mod


def _with_spectrum(m, n, s, seed=0):
    """float32 matrix m x n with singular values ``s`` (descending) and random vectors."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    u = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64)).Q
    return ((u * torch.as_tensor(s, dtype=torch.float64)) @ v.T).float()


def _truth(w, r, first_eigen):
    """Float64 reference: (B@A part, residual) from an independent full SVD."""
    w64 = w.double()
    u, s, vh = torch.linalg.svd(w64, full_matrices=False)
    sl = slice(0, r) if first_eigen else slice(s.numel() - r, s.numel())
    part = (u[:, sl] * s[sl]) @ vh[sl]
    return part, w64 - part, s


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def _part(u, s, vh):
    return (u.double() * s.double()) @ vh.double()


@pytest.mark.parametrize('shape', [(96, 64), (64, 160), (80, 80)])
@pytest.mark.parametrize('first_eigen', [False, True])
def test_exact_matches_float64_svd(shape, first_eigen):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1)) * 0.02
    r = 8
    u, s, vh = minor_components(w, r, first_eigen=first_eigen)
    assert u.dtype == s.dtype == vh.dtype == torch.float32
    assert u.shape == (shape[0], r) and s.shape == (r,) and vh.shape == (r, shape[1])
    assert torch.all(s[:-1] >= s[1:])  # descending, as the release's slicing of torch's SVD
    part, residual, s_all = _truth(w, r, first_eigen)
    expected_s = s_all[:r] if first_eigen else s_all[-r:]
    torch.testing.assert_close(s.double(), expected_s, rtol=1e-6, atol=1e-9)
    assert _rel(_part(u, s, vh), part) < 1e-5
    assert _rel(w.double() - _part(u, s, vh), residual) < 1e-5
    # orthonormal singular vectors
    eye = torch.eye(r, dtype=torch.float64)
    torch.testing.assert_close(u.double().T @ u.double(), eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(vh.double() @ vh.double().T, eye, atol=1e-5, rtol=0)


def test_minor_and_principal_are_the_smallest_and_largest():
    s_true = torch.linspace(5.0, 0.1, 48)
    w = _with_spectrum(64, 48, s_true)
    _, s_min, _ = minor_components(w, 4)
    _, s_max, _ = minor_components(w, 4, first_eigen=True)
    torch.testing.assert_close(s_min, s_true[-4:], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s_max, s_true[:4], rtol=1e-5, atol=1e-6)
    assert s_max.min() > 10 * s_min.max()


@pytest.mark.parametrize('first_eigen', [False, True])
@pytest.mark.parametrize('shape', [(120, 72), (72, 120)])
def test_randomized_path_converges_to_the_requested_subspace(shape, first_eigen):
    # a clear gap after the wanted r values: 4 iterations are plenty
    k, r = min(shape), 6
    bulk = torch.linspace(1.0, 0.5, k - 2 * r)
    s_true = torch.cat([torch.linspace(20, 10, r), bulk, torch.linspace(0.02, 0.01, r)])
    if first_eigen:
        s_true = torch.cat([torch.linspace(20, 10, r), bulk, torch.linspace(0.4, 0.3, r)])
    w = _with_spectrum(*shape, s_true, seed=3)
    u, s, vh = minor_components(w, r, first_eigen=first_eigen, niter=4)
    part, residual, _ = _truth(w, r, first_eigen)
    assert _rel(_part(u, s, vh), part) < 1e-5
    assert _rel(w.double() - _part(u, s, vh), residual) < 1e-5


def test_randomized_minor_is_really_minor():
    """The release's fast path (torch.svd_lowrank) gave the top components; ours the bottom."""
    w = torch.randn(96, 80, generator=torch.Generator().manual_seed(5))
    r = 4
    s_all = torch.linalg.svdvals(w.double())
    _, s_fast, _ = minor_components(w, r, niter=2)
    _, s_top, _ = torch.svd_lowrank(w, q=r, niter=2)  # what the release used
    assert s_fast.max() <= s_all[-2 * r] + 1e-6  # among the 2r smallest
    assert s_top.min() > s_all[r + 8]  # the release's: principal ones
    _, s_fast_top, _ = minor_components(w, r, first_eigen=True, niter=6)
    assert s_fast_top.min() >= s_all[2 * r - 1] - 1e-4


@pytest.mark.parametrize('niter', [None, 2])
def test_deterministic_bit_for_bit(niter):
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(2))
    a = minor_components(w, 4, niter=niter)
    b = minor_components(w, 4, niter=niter)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_rank_deficient_weight():
    w = torch.randn(40, 3, generator=torch.Generator().manual_seed(0)) @ torch.randn(
        3, 32, generator=torch.Generator().manual_seed(1))
    u, s, vh = minor_components(w, 4)
    assert float(s.max()) < 1e-4 * float(torch.linalg.svdvals(w)[0])
    assert _rel(w.double() - _part(u, s, vh), w.double()) < 1e-6
    u, s, vh = minor_components(w, 4, niter=2)
    assert _rel(w.double() - _part(u, s, vh), w.double()) < 1e-6


def test_full_rank_request_reconstructs_the_weight():
    w = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    u, s, vh = minor_components(w, 8)
    assert _rel(_part(u, s, vh), w.double()) < 1e-6


def test_half_precision_weights_are_computed_in_float64():
    w = torch.randn(48, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    u, s, vh = minor_components(w, 4)
    part, _, _ = _truth(w.float(), 4, False)
    assert _rel(_part(u, s, vh), part) < 1e-5


def test_torch_eigensolver_path(monkeypatch):
    """The path used on CUDA (full Gram matrix + torch.linalg.eigh), forced on CPU."""
    monkeypatch.setattr(svd_mod, '_scipy_linalg', lambda: None)
    w = torch.randn(72, 56, generator=torch.Generator().manual_seed(4))
    for first_eigen in (False, True):
        u, s, vh = minor_components(w, 5, first_eigen=first_eigen)
        part, _, _ = _truth(w, 5, first_eigen)
        assert _rel(_part(u, s, vh), part) < 1e-5
        u, s, vh = minor_components(w, 5, first_eigen=first_eigen, niter=3)


def test_nearly_repeated_singular_values_fall_back_to_float64_svd(monkeypatch):
    s_true = torch.linspace(3.0, 1.0, 32)
    s_true[-4] = s_true[-5] * (1 - 1e-9)  # gap after the 4 smallest is ~1e-9 relative
    w = _with_spectrum(48, 32, s_true, seed=7)
    shapes = []
    real_svd = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, 'svd',
                        lambda a, **k: shapes.append(tuple(a.shape)) or real_svd(a, **k))
    minor_components(_with_spectrum(48, 32, torch.linspace(3.0, 1.0, 32), seed=7), 4)
    assert (48, 32) not in shapes  # a clear gap: Gram route, only the thin Ritz SVD
    u, s, vh = minor_components(w, 4)
    assert (48, 32) in shapes, 'expected the float64 SVD fallback for a near-degenerate gap'
    part, _, _ = _truth(w, 4, False)
    assert _rel(w.double() - _part(u, s, vh), w.double() - part) < 1e-5


def test_bad_input():
    with pytest.raises(TypeError, match='floating point'):
        minor_components(torch.ones(8, 8, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match=r'rank 9 must be in 1..8 .*\(8, 12\)'):
        minor_components(torch.randn(8, 12), 9)
    with pytest.raises(ValueError, match='rank 0'):
        minor_components(torch.randn(8, 12), 0)
    with pytest.raises(ValueError, match='2-D'):
        minor_components(torch.randn(8), 1)
    with pytest.raises(ValueError, match='niter'):
        minor_components(torch.randn(8, 8), 2, niter=-1)
