"""Distances and local metric frames on the WGS84 sphere approximation (numpy).

The model carries its own torch copy of the local frame inside the ONNX graph
(`training.neural.model`); this module is what the host code (metrics, baselines, generator) uses.
An equirectangular frame is accurate to well under 0.1 % over the ~100 km areas we serve.
"""

from __future__ import annotations

import numpy as np

EARTH_RADIUS_M = 6_371_008.8


def haversine_m(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in metres between points given in degrees (broadcasts)."""
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp = p2 - p1
    dl = np.radians(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def to_local_en(lat, lon, lat0, lon0) -> tuple[np.ndarray, np.ndarray]:
    """East and north metres of (lat, lon) from the origin (lat0, lon0)."""
    east = np.radians(np.asarray(lon) - lon0) * np.cos(np.radians(lat0)) * EARTH_RADIUS_M
    north = np.radians(np.asarray(lat) - lat0) * EARTH_RADIUS_M
    return east, north


def from_local_en(east, north, lat0, lon0) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of `to_local_en`: degrees from east/north metres."""
    lat = lat0 + np.degrees(np.asarray(north) / EARTH_RADIUS_M)
    lon = lon0 + np.degrees(np.asarray(east) / (EARTH_RADIUS_M * np.cos(np.radians(lat0))))
    return lat, lon
