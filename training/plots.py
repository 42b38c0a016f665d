"""The results figure logged with a training run: a map with error ellipses and error CDFs.

Built on `matplotlib.figure.Figure` directly (rendered with Agg), never `pyplot`: no global
backend state, no display, and nothing left open in a long-running process.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from training.geodesy import from_local_en

MAX_SESSIONS_ON_MAP = 50
_ELLIPSE_POINTS = 64


def plot_results(path: Path, *, receivers_latlon, true_latlon, pred_latlon, cov_m2,
                 errors_by_method: dict[str, np.ndarray], title: str) -> Path:
    """Write one PNG: (a) map of receivers, true and predicted positions with 1σ ellipses,
    (b) the error CDF of every method in `errors_by_method` (metres). Returns `path`.

    Raises:
        OSError: the file cannot be written.
    """
    path, fig = _figure(path, (13, 6), left=0.08, right=0.97, bottom=0.09, top=0.9, wspace=0.22)
    map_ax, cdf_ax = fig.subplots(1, 2)
    _draw_map(map_ax, np.asarray(receivers_latlon, dtype=np.float64),
              np.asarray(true_latlon, dtype=np.float64), np.asarray(pred_latlon, dtype=np.float64),
              np.asarray(cov_m2, dtype=np.float64))
    _draw_cdf(cdf_ax, errors_by_method)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path


def plot_reliability(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], *,
                     title: str = "Reliability") -> Path:
    """Write a PNG of observed vs nominal coverage (`calibration.reliability_curve`), one line per
    method in `curves`. Raises OSError when the file cannot be written."""
    path, fig = _figure(path, (5, 5), left=0.15, right=0.95, bottom=0.12, top=0.92)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="calibrated")
    for name, (nominal, observed) in curves.items():
        ax.plot(nominal, observed, marker="o", label=name)
    ax.set(xlabel="nominal coverage", ylabel="observed coverage", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend()
    fig.savefig(path, dpi=110)
    return path


def _figure(path: Path, size: tuple[float, float], **margins: float) -> tuple[Path, Figure]:
    """A figure with fixed `margins` (fractions, as `subplots_adjust` takes them), not
    constrained_layout: its solver drew the results figure twice (0.17 of its 0.39 s)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=size)
    fig.subplots_adjust(**margins)
    FigureCanvasAgg(fig)
    return path, fig


def ellipse_latlon(center_latlon, cov_m2, n_sigma: float = 1.0) -> np.ndarray:
    """[P, 2] lat/lon outline of the n-σ ellipse of an east/north covariance (m²) at center."""
    eigval, eigvec = np.linalg.eigh(cov_m2)
    t = np.linspace(0.0, 2.0 * np.pi, _ELLIPSE_POINTS)
    circle = np.stack([np.cos(t), np.sin(t)])
    east, north = eigvec @ (n_sigma * np.sqrt(np.maximum(eigval, 0.0))[:, None] * circle)
    lat, lon = from_local_en(east, north, center_latlon[0], center_latlon[1])
    return np.stack([lat, lon], axis=-1)


def _shown_sessions(true_latlon, pred_latlon, cov_m2) -> np.ndarray:
    finite = np.flatnonzero(np.isfinite(true_latlon).all(1) & np.isfinite(pred_latlon).all(1)
                            & np.isfinite(cov_m2).all((1, 2)))
    if finite.size <= MAX_SESSIONS_ON_MAP:
        return finite
    return finite[np.linspace(0, finite.size - 1, MAX_SESSIONS_ON_MAP).astype(int)]


def _draw_map(ax, receivers, true, pred, cov) -> None:
    shown = _shown_sessions(true, pred, cov)
    # one collection each, not two artists per session: drawing, layout and the legend's
    # placement walk every artist (about a fifth of the figure's time with 50 sessions)
    ax.add_collection(LineCollection([[(true[i, 1], true[i, 0]), (pred[i, 1], pred[i, 0])] for i in shown],
                                     colors="0.6", linewidths=0.7))
    ax.add_collection(LineCollection([ellipse_latlon(pred[i], cov[i])[:, ::-1] for i in shown],
                                     colors="tab:orange", linewidths=0.8, label="1σ ellipse" if shown.size else None))
    ax.scatter(true[shown, 1], true[shown, 0], s=14, color="tab:blue", label="true", zorder=3)
    ax.scatter(pred[shown, 1], pred[shown, 0], s=18, marker="x", color="tab:red",
               label="predicted", zorder=3)
    ax.scatter(receivers[:, 1], receivers[:, 0], s=90, marker="^", color="black",
               label="receivers", zorder=4)
    mean_lat = np.nanmean(receivers[:, 0]) if receivers.size else 0.0
    ax.set_aspect(1.0 / np.cos(np.radians(mean_lat)))  # equal metres per degree on screen
    ax.set_xlabel("longitude (°)")
    ax.set_ylabel("latitude (°)")
    ax.set_title(f"(a) {shown.size} test sessions")
    ax.legend(loc="best", fontsize=8)


def _draw_cdf(ax, errors_by_method: dict[str, np.ndarray]) -> None:
    for name, errors_m in errors_by_method.items():
        errors_km = np.sort(np.asarray(errors_m, dtype=np.float64)) / 1000.0
        errors_km = errors_km[np.isfinite(errors_km)]
        if errors_km.size == 0:
            continue
        fraction = np.arange(1, errors_km.size + 1) / errors_km.size
        ax.step(errors_km, fraction, where="post",
                label=f"{name} (median {np.median(errors_km):.1f} km)")
    ax.set_xlabel("localization error (km)")
    ax.set_ylabel("fraction of sessions")
    ax.set_ylim(0.0, 1.0)
    ax.set_xlim(left=0.0)
    ax.grid(alpha=0.3)
    ax.set_title("(b) error CDF")
    ax.legend(loc="lower right", fontsize=8)
