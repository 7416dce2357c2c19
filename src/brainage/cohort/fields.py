"""Smooth random fields for the renderer, evaluated separably (fast, and without BLAS so bit-stable)."""

from __future__ import annotations

import numpy as np

#: 1 / (∫β₃²)^{3/2}: makes a tensor cubic B-spline with N(0, 1) coefficients have unit SD.
_BSPLINE_GAIN = (151.0 / 315.0) ** -1.5


def bspline_field(rng: np.random.Generator, sd: float, spacing: float, shape: tuple[int, int, int], voxel: float) -> np.ndarray:
    """Smooth random scalar field (SD ≈ ``sd``) on a grid of ``voxel`` units: a tensor cubic
    B-spline with N(0, 1) coefficients on control points every ``spacing`` units, starting one
    spacing before the grid's first point."""
    bases = [_bspline_basis(n, voxel / spacing) for n in shape]
    coefficients = rng.standard_normal(tuple(b.shape[1] for b in bases)) * (sd * _BSPLINE_GAIN)
    partial = np.einsum("ijk,zk->ijz", coefficients, bases[2])
    partial = np.einsum("ijz,yj->iyz", partial, bases[1]).astype(np.float32)
    field = np.zeros(shape, dtype=np.float32)
    for i in range(bases[0].shape[1]):
        rows = np.flatnonzero(bases[0][:, i])
        if rows.size:
            field[rows[0] : rows[-1] + 1] += bases[0][rows[0] : rows[-1] + 1, i, None, None] * partial[i][None]
    return field


def _bspline_basis(n: int, step: float) -> np.ndarray:
    """Cubic B-spline weights (n points × control points) for points at ``step·i`` control units."""
    t = np.arange(n) * step
    controls = np.arange(-1, int(np.ceil(t[-1])) + 3)
    u = np.abs(t[:, None] - controls[None, :])
    return np.where(u < 1.0, 2.0 / 3.0 - u**2 + u**3 / 2.0, np.where(u < 2.0, (2.0 - u) ** 3 / 6.0, 0.0)).astype(np.float32)
