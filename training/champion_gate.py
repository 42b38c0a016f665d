"""The champion gate (model.md): a new version becomes champion only when it passed the parity
check and is at least as good as the current champion on the same held-out sessions; otherwise
it stays a candidate. Its decision, with the reason, travels as version tags (`version_facts`)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from foundation.logs import format_km, log_event
from training.datasets.verified import VerifiedDataset
from training.metrics import localization_errors_m

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GateDecision:
    """The champion gate (model.md): champion only after the parity check passed, and when at least
    as good as the current champion on the same held-out sessions."""

    promoted: bool
    reason: str
    champion_version: int | None = None  # the champion it was compared with
    champion_median_error_m: float | None = None  # that champion's score on the same sessions

    def tags(self) -> dict[str, str]:
        tags = {"gate_promoted": str(self.promoted).lower(), "gate_reason": self.reason}
        if self.champion_version is not None:
            tags["gate_champion_version"] = str(self.champion_version)
        if self.champion_median_error_m is not None:
            tags["gate_champion_median_error_m"] = repr(float(self.champion_median_error_m))  # exact: it is reported
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> "GateDecision":
        champion, median = tags.get("gate_champion_version"), tags.get("gate_champion_median_error_m")
        return cls(promoted=tags["gate_promoted"] == "true", reason=tags["gate_reason"],
                   champion_version=int(champion) if champion else None,
                   champion_median_error_m=float(median) if median else None)

    def at_completion(self, version: int, champion_now: int | None) -> "GateDecision":
        """The decision to apply when the version's aliases are set: a promotion stands while the
        champion is still the one it was compared with (or already this version); a champion that
        moved meanwhile was never compared with, so the gate fails closed."""
        if not self.promoted or champion_now in (self.champion_version, version):
            return self
        return GateDecision(False, f"the champion moved to version {champion_now} after this version was "
                                   f"compared with {self._compared_with()}", self.champion_version,
                            self.champion_median_error_m)

    def _compared_with(self) -> str:
        return f"version {self.champion_version}" if self.champion_version is not None else "no champion"


def judge(champion: tuple[int, Path] | None, data: VerifiedDataset, test_idx: np.ndarray, median_error_m: float,
          parity_passed: bool) -> GateDecision:
    """The gate for a new version whose test median is `median_error_m`, against `champion` (its
    version and model.onnx, None when there is none) scored on the same sessions `test_idx`."""
    scored = (champion[0], score_onnx(champion[1], data, test_idx)) if champion else None
    decision = decide(parity_passed, median_error_m, scored)
    log_event(log, "champion gate", stage="register", median_error_m=median_error_m, **asdict(decision))
    return decision


def decide(parity_passed: bool, median_error_m: float, champion: tuple[int, float | None] | None) -> GateDecision:
    """`champion`: (its version, its median error on the same sessions, None when it cannot take them)."""
    if not parity_passed:
        return GateDecision(False, "ONNX Runtime and PyTorch disagree beyond the tolerances (parity check failed)",
                            *(champion or (None, None)))
    if champion is None:
        return GateDecision(True, "no champion yet")
    version, champion_median = champion
    if champion_median is None:
        return GateDecision(False, f"champion version {version} takes other captures: not comparable", version)
    comparison = (f"test median {format_km(median_error_m)} {'≤' if median_error_m <= champion_median else '>'} "
                  f"champion version {version}'s {format_km(champion_median)} on the same sessions")
    return GateDecision(median_error_m <= champion_median, comparison, version, champion_median)


def score_onnx(onnx_path: Path, data: VerifiedDataset, indices: np.ndarray) -> float | None:
    """Median error of an ONNX model on the given sessions; None when its input shape cannot take them."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    samples = session.get_inputs()[0].shape[2]
    if samples != data.manifest.samples_per_capture:
        return None
    errors = []
    for chunk, iq, online, rx in data.chunks(indices):
        position, _ = session.run(None, {"iq": iq, "rx_position": rx, "rx_online": online})
        errors.append(localization_errors_m(position.astype(np.float64), data.emitter[chunk, :2]))
    return float(np.median(np.concatenate(errors)))
