"""Earth-centred frames and short geodesic distances on the WGS84 ellipsoid.

Membership tests run in Earth-centred, Earth-fixed (ECEF) metres: a point is
mapped once to (x, y, z) on the ellipsoid surface and its straight-line chord
to a fence centre is turned into the geodesic length along the surface.

For a geodesic of length ``s`` whose space curvature is ``k`` (the ellipsoid's
normal curvature in its direction, between 1/N and 1/M), the chord is
``c = s - k**2 s**3 / 24 + O(s**5)``. Inverting with the mean radius ``R``
leaves an error below ``s**3 / 24 * |k**2 - 1/R**2|``: under 0.1 micrometre
for s <= 2 km anywhere on Earth. The frame has no seams: poles and the
antimeridian are ordinary points in ECEF.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import numpy.typing as npt
from pyproj import Geod

WGS84_A = 6_378_137.0
WGS84_F = 1 / 298.257223563
WGS84_E2 = WGS84_F * (2 - WGS84_F)
MEAN_RADIUS_M = 6_371_008.8

#: Chord lengths up to this are converted with the short-distance series; the
#: series error stays below 0.1 micrometre up to here.
SHORT_CHORD_M = 2_000.0

_GEOD = Geod(ellps="WGS84")

F = TypeVar("F", float, npt.NDArray[np.float64])


def ecef(
    lats: npt.ArrayLike, lons: npt.ArrayLike
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Map surface points to ECEF metres.

    Parameters
    ----------
    lats, lons : array_like of float64, shape (n,)
        Geodetic latitude and longitude in degrees.

    Returns
    -------
    x, y, z : ndarray of float64, shape (n,)
    """
    phi = np.radians(np.asarray(lats, dtype=np.float64))
    lam = np.radians(np.asarray(lons, dtype=np.float64))
    sin_phi = np.sin(phi)
    n = WGS84_A / np.sqrt(1.0 - WGS84_E2 * sin_phi * sin_phi)
    r_cos = n * np.cos(phi)
    return r_cos * np.cos(lam), r_cos * np.sin(lam), n * (1.0 - WGS84_E2) * sin_phi


def geodesic_distance(
    lats1: npt.ArrayLike, lons1: npt.ArrayLike, lats2: npt.ArrayLike, lons2: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Exact WGS84 geodesic distance in metres (Karney, via pyproj.Geod.inv).

    All inputs are degrees, broadcastable float64 arrays of shape (n,).
    """
    a1, o1, a2, o2 = np.broadcast_arrays(
        np.asarray(lats1, np.float64),
        np.asarray(lons1, np.float64),
        np.asarray(lats2, np.float64),
        np.asarray(lons2, np.float64),
    )
    if a1.size == 0:
        return np.zeros(a1.shape, dtype=np.float64)
    _, _, dist = _GEOD.inv(
        np.ascontiguousarray(o1),
        np.ascontiguousarray(a1),
        np.ascontiguousarray(o2),
        np.ascontiguousarray(a2),
    )
    return np.asarray(dist, dtype=np.float64)


def geodesic_distance_one(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """:func:`geodesic_distance` for one pair of points."""
    _, _, dist = _GEOD.inv(lon1, lat1, lon2, lat2)
    return float(dist)
