"""Scattered-data interpolation in log-shape space: the geometry behind the latency estimator.

:class:`LogInterpolator` interpolates one value per measured point (the estimator uses
log-utilization) over feature vectors (log of the shape dimensions):

* inside the convex hull of the measured points: piecewise-linear interpolation on a Delaunay
  triangulation (what ``scipy.interpolate.LinearNDInterpolator`` does, written out so the
  leave-one-out path below can reuse the barycentric step on local triangulations);
* outside it: distance-weighted k-nearest neighbours (``1 / distance`` weights, as
  ``sklearn.neighbors.KNeighborsRegressor(weights="distance")``; a ``cKDTree`` query is used
  directly because the sweep calls this thousands of times and sklearn's per-call validation
  would dominate).

Measured grids are often flat: a dimension that never varies (``q_len = 1`` in decode) or
dimensions that vary together (``q_len == kv_len`` in prefill). Qhull cannot triangulate such
point sets, so constant dimensions are dropped and collinear ones are folded by projecting onto
the principal subspace of the points (SVD); a query off that subspace is "outside" and goes to
the neighbours. One varying dimension uses ``np.interp``; if Qhull still fails, every query
goes to the neighbours.

A triangulation can be kept as plain arrays (:class:`Mesh`) and handed to a new interpolator,
which then answers a few queries by a numpy search over the simplices without importing scipy;
many queries, the neighbours and leave-one-out rebuild scipy's structures on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scipy.spatial import Delaunay

#: Singular values below this fraction of the largest mark a flat (rank-deficient) point set.
_RANK_TOL = 1e-9
#: Distance (in log-shape units) within which a query counts as lying on the points'
#: subspace (float noise of the projection is ~1e-15; distinct shapes below 2**31 differ by
#: more than 4e-10 in log).
_GEOM_TOL = 1e-11
#: Measured grids are cospherical everywhere (the corners of every grid cell lie on a sphere),
#: so Qhull's triangulation of a grid holds zero-volume simplices, which break scipy's directed
#: point location (it falls back to brute force, ~50x slower) and the LOO re-triangulations.
#: A fixed small shear of the coordinates turns cells into parallelepipeds, whose corners are
#: not cospherical: the triangulation becomes non-degenerate. Barycentric coordinates are
#: affine-invariant, so the interpolation is still piecewise linear over the original points.
_SHEAR = 0.1
#: Barycentric tolerance: queries on the hull boundary (e.g. the largest measured M) are inside.
_BARY_TOL = 1e-9
#: Up to this many queries, a kept :class:`Mesh` is searched with numpy (no scipy import); more
#: queries take scipy's directed walk, and so does every query once scipy's triangulation is built
#: or this interpolator has searched :data:`SEARCH_BUDGET` queries with numpy (a search costs a
#: pass over every simplex; scipy's walk a few steps).
SEARCH_AT_MOST = 64
SEARCH_BUDGET = 256


@dataclass(frozen=True)
class Mesh:
    """A triangulation as arrays: sheared coordinates, simplices, their barycentric transforms,
    the hull's facet equations and the shear (:func:`_triangulate`)."""

    points: np.ndarray
    simplices: np.ndarray
    transform: np.ndarray
    facets: np.ndarray
    shear: np.ndarray

    def find(self, z: np.ndarray) -> np.ndarray:
        """The first simplex holding each sheared query (-1 outside), as scipy's brute force."""
        d = z.shape[1]
        out = np.full(len(z), -1, dtype=np.intp)
        T = self.transform
        for i, q in enumerate(z):
            b = np.einsum("sij,sj->si", T[:, :d], q - T[:, d])
            ok = (b >= -_BARY_TOL).all(axis=1) & (1.0 - b.sum(axis=1) >= -_BARY_TOL)
            hit = np.flatnonzero(ok)
            if len(hit):
                out[i] = hit[0]
        return out

    def interpolate(self, simplex: np.ndarray, z: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Linear interpolation of ``values`` (one per point) inside the given simplices."""
        return _barycentric(self.transform, self.simplices, simplex, z, values)


class LogInterpolator:
    """Piecewise-linear interpolation inside the hull of the points, k-NN outside it."""

    def __init__(self, features: np.ndarray, values: np.ndarray, neighbors: int = 4, *,
                 mesh: Mesh | None = None) -> None:
        F = np.asarray(features, dtype=np.float64)
        if F.ndim != 2 or len(F) == 0:
            raise ValueError("features must be a non-empty (points, dims) array")
        self.features = F
        self.values = np.asarray(values, dtype=np.float64)
        self.neighbors = int(min(neighbors, len(F)))
        self._tree = None
        self.mean = F.mean(axis=0)
        self.basis = _basis(F - self.mean)
        self.rank = self.basis.shape[1]
        self.coords = (F - self.mean) @ self.basis
        #: the triangulation as arrays (None: rank < 2, too few points, or Qhull failed)
        self.mesh: Mesh | None = None
        self._tri: "Delaunay | None" = None
        self._searched = 0
        if self.rank == 1:
            order = np.argsort(self.coords[:, 0], kind="stable")
            self._t, self._ty = self.coords[order, 0], self.values[order]
        elif self.rank >= 2 and len(F) > self.rank:
            if mesh is not None:
                self.mesh = mesh
            else:
                self._triangulate()

    def _triangulate(self) -> None:
        from scipy.spatial import ConvexHull, QhullError

        tri, shear = _triangulate(self.coords)
        if tri is None:
            return
        try:
            facets = ConvexHull(tri.points).equations
        except (QhullError, ValueError):
            return  # degenerate beyond what the projection fixed: neighbours only
        self._tri = tri
        self.mesh = Mesh(tri.points, tri.simplices, tri.transform, facets, shear)

    @property
    def tri(self) -> "Delaunay | None":
        """scipy's triangulation (rebuilt, identically, where the mesh was kept as arrays)."""
        if self._tri is None and self.mesh is not None:
            self._tri, _ = _triangulate(self.coords)
        return self._tri

    @property
    def tree(self):
        """A k-d tree of the points, for the neighbours (built on first use)."""
        if self._tree is None:
            from scipy.spatial import cKDTree

            self._tree = cKDTree(self.features)
        return self._tree

    def __call__(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Interpolated values at query features ``(q, dims)`` and whether each was inside."""
        Fq = np.asarray(features, dtype=np.float64)
        z, on = self._project(Fq)
        out = np.empty(len(Fq))
        inside = np.zeros(len(Fq), dtype=bool)
        if self.rank == 0:
            inside = on
            out[inside] = self.values[0]
        elif self.rank == 1:
            t = z[:, 0]
            inside = on & (t >= self._t[0] - _GEOM_TOL) & (t <= self._t[-1] + _GEOM_TOL)
            out[inside] = np.interp(t[inside], self._t, self._ty)
        elif self.mesh is not None:
            mesh = self.mesh
            z = z @ mesh.shear.T
            simplex = np.full(len(Fq), -1)
            if self._tri is None and on.sum() <= SEARCH_AT_MOST and self._searched < SEARCH_BUDGET:
                self._searched += int(on.sum())
                simplex[on] = mesh.find(z[on])
            else:
                tri = self.tri
                simplex[on] = tri.find_simplex(z[on], tol=_BARY_TOL)
                # scipy's directed walk gives up on points lying on the hull boundary (common: a
                # query at the largest measured M); those inside the hull get a brute-force search.
                retry = on & (simplex < 0)
                if retry.any():
                    retry[retry] = (z[retry] @ mesh.facets[:, :-1].T + mesh.facets[:, -1]).max(axis=1) <= 1e-9
                    if retry.any():
                        simplex[retry] = tri.find_simplex(z[retry], bruteforce=True, tol=_BARY_TOL)
            inside = simplex >= 0
            out[inside] = mesh.interpolate(simplex[inside], z[inside], self.values)
            inside &= np.isfinite(out)  # a degenerate simplex left despite the shear
        if (~inside).any():
            out[~inside] = self.nearest(Fq[~inside])
        return out, inside

    def nearest(self, features: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """Distance-weighted mean of the k nearest points (``exclude``: a point index per query)."""
        Fq = np.asarray(features, dtype=np.float64)
        if len(Fq) == 0:
            return np.empty(0)
        extra = 0 if exclude is None else 1
        k = min(self.neighbors + extra, len(self.features))
        dist, idx = self.tree.query(Fq, k=k)
        dist, idx = dist.reshape(len(Fq), k), idx.reshape(len(Fq), k)
        if exclude is not None:
            drop = idx == np.asarray(exclude)[:, None]
            drop[~drop.any(axis=1), -1] = True  # query point not among its neighbours: drop the farthest
            keep = np.argsort(drop, axis=1, kind="stable")[:, : k - 1]
            dist, idx = np.take_along_axis(dist, keep, 1), np.take_along_axis(idx, keep, 1)
        w = 1.0 / np.maximum(dist, 1e-12)
        return (w * self.values[idx]).sum(axis=1) / w.sum(axis=1)

    def leave_one_out(self) -> tuple[np.ndarray, np.ndarray]:
        """Each point's value interpolated from all the others, and whether it was inside their hull.

        Removing a vertex from a Delaunay triangulation only re-triangulates its star, whose
        new simplices are Delaunay simplices of the vertex's neighbours; so the point is
        interpolated on the triangulation of its neighbours alone — exact, and about a
        millisecond per point instead of a full re-triangulation.
        """
        n = len(self.features)
        out = np.full(n, np.nan)
        inside = np.zeros(n, dtype=bool)
        if self.rank == 1 and n >= 3:
            order = np.argsort(self.coords[:, 0], kind="stable")
            t, y = self.coords[order, 0], self.values[order]
            gap = t[2:] - t[:-2]
            frac = np.divide(t[1:-1] - t[:-2], gap, out=np.full(n - 2, 0.5), where=gap > 0)
            out[order[1:-1]] = y[:-2] + frac * (y[2:] - y[:-2])
            inside[order[1:-1]] = True
        elif self.tri is not None:
            from scipy.spatial import Delaunay, QhullError

            indptr, nbrs = self.tri.vertex_neighbor_vertices
            for i in range(n):
                nb = nbrs[indptr[i]:indptr[i + 1]]
                if len(nb) <= self.rank:
                    continue
                try:
                    local = Delaunay(self.tri.points[nb])
                except (QhullError, ValueError):
                    continue
                s = local.find_simplex(self.tri.points[i:i + 1], bruteforce=True, tol=_BARY_TOL)
                if s[0] >= 0:
                    out[i] = _barycentric(local.transform, local.simplices, s, self.tri.points[i:i + 1],
                                          self.values[nb])[0]
                    inside[i] = np.isfinite(out[i])
        rest = np.flatnonzero(~inside)
        if len(rest) and n > 1:
            out[rest] = self.nearest(self.features[rest], exclude=rest)
        return out, inside

    def _project(self, Fq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        centered = Fq - self.mean
        z = centered @ self.basis
        off = np.linalg.norm(centered - z @ self.basis.T, axis=1)
        return z, off <= _GEOM_TOL


def _triangulate(coords: np.ndarray) -> "tuple[Delaunay | None, np.ndarray]":
    """Delaunay triangulation of sheared coordinates (see ``_SHEAR``) and the shear used.

    Tries a few shears and keeps the first without degenerate simplices (or the best one);
    returns ``None`` when Qhull cannot triangulate the points at all.
    """
    from scipy.spatial import Delaunay, QhullError

    d = coords.shape[1]
    best: "tuple[int, Delaunay | None, np.ndarray]" = (1 << 62, None, np.eye(d))
    for seed in range(3):
        off = np.random.default_rng(seed).uniform(-1.0, 1.0, (d, d))
        shear = np.eye(d) + _SHEAR * (off - np.diag(np.diag(off)))
        try:
            tri = Delaunay(coords @ shear.T)
        except (QhullError, ValueError):
            continue
        degenerate = int(np.isnan(tri.transform).any(axis=(1, 2)).sum())
        if degenerate < best[0]:
            best = (degenerate, tri, shear)
        if degenerate == 0:
            break
    return best[1], best[2]


def _basis(centered: np.ndarray) -> np.ndarray:
    """Orthonormal basis (dims, rank) of the subspace the centred points span.

    Constant dimensions are dropped exactly; only when the remaining ones are still dependent
    is the basis rotated (SVD), so axis-aligned grids keep exact coordinates.
    """
    d = centered.shape[1]
    varying = np.flatnonzero(np.ptp(centered, axis=0) > 0)
    select = np.eye(d)[:, varying]
    if len(varying) == 0:
        return select
    sub = centered[:, varying]
    s, vt = np.linalg.svd(sub, full_matrices=False)[1:]
    rank = int((s > _RANK_TOL * s[0]).sum())
    return select if rank == len(varying) else select @ vt[:rank].T


def _barycentric(transform: np.ndarray, simplices: np.ndarray, simplex: np.ndarray, z: np.ndarray,
                 values: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``values`` (one per triangulated point) inside the given simplices."""
    d = z.shape[1]
    T = transform[simplex]
    b = np.einsum("qij,qj->qi", T[:, :d], z - T[:, d])
    w = np.concatenate([b, 1.0 - b.sum(axis=1, keepdims=True)], axis=1)
    return (w * values[simplices[simplex]]).sum(axis=1)
