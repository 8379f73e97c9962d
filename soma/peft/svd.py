"""The r smallest (or largest) singular triplets of a weight matrix, fast and exact.

Exact path (``niter=None``), the default of ``lora_weight_init='sora'``:

1. ``G`` = Gram matrix of the smaller side of ``W`` (k x k, k = min(out, in)), in float64
   (products of float32 numbers are exact in float64, so nothing of the minor spectrum is
   lost; BLAS ``syrk`` on CPU);
2. only the r (+1, to measure the gap) wanted eigenpairs of ``G``, by a partial symmetric
   eigensolver (LAPACK ``syevr`` through scipy on CPU; ``torch.linalg.eigh`` on CUDA or
   without scipy);
3. Rayleigh-Ritz on the other side: the thin SVD of ``W V_r`` (out x r) gives ``U_r``, ``S_r``
   as singular values of ``W`` restricted to the subspace, so ``U_r S_r Vh_r = W V_r V_r^T``.

The Gram matrix squares the condition number; the eigenvector error is estimated from the
gap and when it could exceed ~1e-7 of ``B@A`` (nearly repeated or tiny singular values) a
float64 ``torch.linalg.svd`` is used instead. Either way the result equals a float64 exact SVD
to ~1e-9 (tests check < 1e-5 relative, Frobenius, on ``B@A`` and on the residual).

Randomised path (``niter=N``, ``lora_weight_init='sora_niter_<N>'``): subspace iteration on a
random block of r + p vectors, N iterations, then Rayleigh-Ritz. For minor components it is
*inverse* iteration (Cholesky of the float64 Gram matrix, slightly shifted), so it really
returns the minor subspace (the original returned the top components whatever
``first_eigen`` said); with ``first_eigen`` it is the usual power iteration on ``W``.
It is an approximation: each iteration shrinks the error by about ``lambda_r / lambda_{r+p+1}``
(eigenvalues of the Gram matrix counted from the wanted end), fast when the wanted singular
values stand apart, slow when they are packed (e.g. the bottom of a tall random matrix). It
saves the eigensolver (~40% of the exact path), not the Gram matrix.

Everything is deterministic: the random block comes from ``generator`` (default a CPU
generator seeded with 0), so the same weight always gives bit-identical results on the same
machine and thread count.
"""
import math
from typing import Optional, Tuple

import torch

__all__ = ['minor_components', 'exact_svd_components', 'random_components', 'components64']

_EPS64 = torch.finfo(torch.float64).eps
# accept the Gram-matrix route when its estimated relative error on B@A is below this
_GRAM_TOL = 1e-7


def _check(weight: torch.Tensor, r: int) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(f'minor_components: expected a 2-D weight tensor, got '
                         f'{getattr(weight, "shape", type(weight))}')
    if not weight.is_floating_point():
        raise TypeError(f'minor_components: weight must be floating point, got {weight.dtype}')
    if isinstance(r, bool) or not isinstance(r, int) or not 0 < r <= min(weight.shape):
        raise ValueError(f'minor_components: rank {r!r} must be in 1..{min(weight.shape)} for '
                         f'a weight of shape {tuple(weight.shape)}')


def _sign_fix(u: torch.Tensor, vh: torch.Tensor):
    """Deterministic signs: the entry of largest magnitude in each column of u is positive."""
    idx = u.abs().argmax(dim=0)
    signs = torch.sign(u[idx, torch.arange(u.shape[1], device=u.device)])
    signs[signs == 0] = 1
    return u * signs, vh * signs[:, None]


def exact_svd_components(weight: torch.Tensor, r: int, first_eigen: bool = False):
    """Reference: float64 ``torch.linalg.svd``; returns float64 (U_r, S_r, Vh_r), S descending."""
    _check(weight, r)
    u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
    sl = slice(0, r) if first_eigen else slice(s.shape[0] - r, s.shape[0])
    u_r, vh_r = _sign_fix(u[:, sl], vh[sl])
    return u_r, s[sl], vh_r


def random_component_indices(k: int, r: int, seed: int = 0) -> torch.Tensor:
    """r distinct indices of 0..k-1 (singular values in descending order), ascending; the
    same for the same (k, r, seed) on every machine (CPU generator)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(k, generator=generator)[:r].sort().values


def random_components(weight: torch.Tensor, r: int, seed: int = 0):
    """(U_r, S_r, Vh_r), float64, of r singular triplets of ``weight`` at random indices
    (:func:`random_component_indices`; exact float64 SVD), S descending: the ablation's
    'random components' between the minor and the principal ones."""
    _check(weight, r)
    u, s, vh = torch.linalg.svd(weight.detach().to(torch.float64), full_matrices=False)
    idx = random_component_indices(s.shape[0], r, seed).to(s.device)
    u_r, vh_r = _sign_fix(u[:, idx], vh[idx])
    return u_r, s[idx], vh_r


def _ritz(w: torch.Tensor, basis: torch.Tensor, r: int, first_eigen: bool, right: bool):
    """Rayleigh-Ritz: best r triplets of ``w`` within the orthonormal ``basis``.

    ``right``: ``basis`` spans right singular vectors (in-space), else left (out-space).
    Returns float64 (U_r, S_r, Vh_r) with S descending.
    """
    y = w @ basis if right else w.T @ basis  # (other side) x l
    q, s, zh = torch.linalg.svd(y, full_matrices=False)  # y = q diag(s) zh
    sl = slice(0, r) if first_eigen else slice(s.shape[0] - r, s.shape[0])
    other, s_r = q[:, sl], s[sl]
    this = basis @ zh[sl].T  # rotated basis vectors, matching s_r
    if right:
        u_r, vh_r = other, this.T
    else:
        u_r, vh_r = this, other.T
    u_r, vh_r = _sign_fix(u_r, vh_r)
    return u_r, s_r, vh_r


def _gram(w: torch.Tensor, right: bool):
    """Gram matrix of the smaller side, float64 (``w.T @ w`` if ``right`` else ``w @ w.T``).

    Returns ``(gram, upper_only)``: on CPU only the upper triangle is filled (BLAS ``syrk``,
    half the work of a product; the rest is 0) and :func:`_partial_eigh` reads that triangle.
    """
    if w.device.type == 'cpu' and _scipy_linalg() is not None:
        from scipy.linalg import blas  # scipy: optional, heavy (CPU fast path)
        a = w.numpy()  # C-ordered (m, n): its transpose is a Fortran-ordered (n, m) view
        # syrk(x, trans=0) = x @ x.T, syrk(x, trans=1) = x.T @ x, for x = a.T = w.T
        c = blas.dsyrk(1.0, a.T, trans=0 if right else 1, lower=0)
        return torch.from_numpy(c), True
    return (w.T @ w if right else w @ w.T), False


def _scipy_linalg():
    try:
        import scipy.linalg  # scipy: optional, heavy (CPU fast path)
        return scipy.linalg
    except ImportError:  # pragma: no cover - scipy is a dependency
        return None


def _partial_eigh(gram: torch.Tensor, lo: int, hi: int):
    """Eigenpairs lo..hi (inclusive, ascending) of a symmetric float64 matrix."""
    linalg = _scipy_linalg() if gram.device.type == 'cpu' else None
    if linalg is not None:
        vals, vecs = linalg.eigh(gram.numpy(), lower=False, subset_by_index=[lo, hi],
                                 driver='evr', check_finite=False, overwrite_a=True)
        return torch.from_numpy(vals), torch.from_numpy(vecs)
    vals, vecs = torch.linalg.eigh(gram, UPLO='U')
    return vals[lo:hi + 1], vecs[:, lo:hi + 1]


def _exact(w: torch.Tensor, r: int, first_eigen: bool):
    m, n = w.shape
    k = min(m, n)
    right = n <= m  # eigenvectors of the smaller Gram matrix: right side when in <= out
    gram, upper_only = _gram(w, right)
    # Frobenius norm >= lambda_max (one triangle + diagonal when only the upper one is filled)
    sq_sum = float(torch.linalg.vector_norm(gram)) ** 2
    diag_sq = float(torch.linalg.vector_norm(gram.diagonal())) ** 2
    lam_max = math.sqrt(max(2 * sq_sum - diag_sq if upper_only else sq_sum, 0.0))
    extra = 1 if r < k else 0
    if first_eigen:
        lo, hi = k - r - extra, k - 1
    else:
        lo, hi = 0, r - 1 + extra
    vals, vecs = _partial_eigh(gram, lo, hi)
    if extra:
        # gap between the kept and the first discarded eigenvalue
        if first_eigen:
            kept, other, basis = vals[1], vals[0], vecs[:, 1:]
        else:
            kept, other, basis = vals[-2], vals[-1], vecs[:, :-1]
        gap = abs(float(other) - float(kept))
        kept_sv = math.sqrt(max(float(kept), _EPS64 * lam_max))
        other_sv = math.sqrt(max(float(other), _EPS64 * lam_max))
        est = 16 * _EPS64 * lam_max / max(gap, 1e-300) * (other_sv / kept_sv) if lam_max > 0 else 0
        if est > _GRAM_TOL and float(kept) > 1e3 * _EPS64 * lam_max:
            u, s, vh = torch.linalg.svd(w, full_matrices=False)
            sl = slice(0, r) if first_eigen else slice(k - r, k)
            u_r, vh_r = _sign_fix(u[:, sl], vh[sl])
            return u_r, s[sl], vh_r
    else:
        basis = vecs
    return _ritz(w, basis, r, first_eigen, right)


def _orth(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(x).Q


def _randomized(w: torch.Tensor, r: int, first_eigen: bool, niter: int,
                generator: Optional[torch.Generator]):
    m, n = w.shape
    k = min(m, n)
    right = n <= m
    ell = min(k, r + max(r, 8))  # r + oversampling
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    start = torch.randn(k, ell, generator=generator, dtype=torch.float64,
                        device=generator.device).to(w.device)
    if first_eigen:
        # power iteration on the smaller side's Gram operator, applied as w^T (w x)
        op = (lambda x: w.T @ (w @ x)) if right else (lambda x: w @ (w.T @ x))
    else:
        gram, _ = _gram(w, right)  # the upper triangle is all that is read below
        # tiny shift keeps the Cholesky factorisation defined for rank-deficient weights
        shift = 1e3 * _EPS64 * float(gram.diagonal().sum()) + 1e-300
        gram.diagonal().add_(shift)
        chol, info = torch.linalg.cholesky_ex(gram, upper=True)
        if int(info) != 0:
            return _exact(w, r, first_eigen)
        op = lambda x: torch.cholesky_solve(x, chol, upper=True)  # noqa: E731
    basis = _orth(op(start))
    for _ in range(niter):
        basis = _orth(op(basis))
    return _ritz(w, basis, r, first_eigen, right)


def components64(weight: torch.Tensor, r: int, first_eigen: bool = False,
                  niter: Optional[int] = None, generator: Optional[torch.Generator] = None
                  ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Like :func:`minor_components`, float64 results (used by the layer)."""
    _check(weight, r)
    w = weight.detach().to(torch.float64)
    with torch.no_grad():
        if niter is None:
            return _exact(w, r, first_eigen)
        if niter < 0:
            raise ValueError(f'minor_components: niter must be >= 0, got {niter}')
        return _randomized(w, r, first_eigen, niter, generator)


def minor_components(weight: torch.Tensor, r: int, first_eigen: bool = False,
                     niter: Optional[int] = None,
                     generator: Optional[torch.Generator] = None):
    """Return (U_r, S_r, Vh_r) of ``weight`` (out x in), float32, S_r in descending order.

    The r smallest singular triplets, or the r largest with ``first_eigen=True``, so that
    ``U_r @ diag(S_r) @ Vh_r`` is the matching part of ``weight``. ``niter=None``: exact
    (float64 Gram matrix + partial eigensolver + Rayleigh-Ritz, float64 SVD when that could
    be inaccurate); ``niter=N``: randomised subspace iteration with N iterations (inverse
    iteration for minor components), seeded by ``generator`` (default: seed 0).
    Runs on the device of ``weight``.
    """
    u, s, vh = components64(weight, r, first_eigen, niter, generator)
    return u.float(), s.float(), vh.float()
