"""The champion gate (model.md): a new version becomes champion only when it passed the parity
check and, scored in ONNX Runtime beside the current champion on the same held-out sessions, its
median error is no worse, its p90 no worse beyond P90_TOLERANCE and its 95 % coverage no further
from 0.95 beyond CALIBRATION_TOLERANCE; otherwise it stays a candidate. A better median alone
never promotes a model with a much worse tail or an overconfident covariance. The decision, its
figures and its reason travel as version tags (`version_facts`).

The margins are judgement, not tuned on any data: the median must not get worse at all; the p90
may wobble by 5 % (a few tail sessions on a few hundred test sessions move it that much); the
95 % coverage may drift by 3 points (binomial noise of ±2.4 points on 300 sessions)."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from foundation.logs import format_km, log_event
from training.datasets.verified import VerifiedDataset
from training.metrics import CHI2_2DOF_95, localization_errors_m, mahalanobis_sq

log = logging.getLogger(__name__)
P90_TOLERANCE = 0.05  # the candidate's p90 may be at most 5 % above the champion's
CALIBRATION_TOLERANCE = 0.03  # its |coverage_95 - 0.95| may be at most 3 points above the champion's


@dataclass(frozen=True)
class GateScores:
    """One model's figures on the gate's sessions, from ONNX Runtime."""

    median_error_m: float
    p90_error_m: float
    coverage_95: float

    @property
    def calibration_gap(self) -> float:
        return abs(self.coverage_95 - 0.95)

    def text(self) -> str:
        return (f"median {format_km(self.median_error_m)}, p90 {format_km(self.p90_error_m)}, "
                f"95 % coverage {self.coverage_95:.2f}")


@dataclass(frozen=True)
class GateDecision:
    """The gate's verdict, with the champion it was compared with and both models' figures."""

    promoted: bool
    reason: str
    champion_version: int | None = None  # the champion it was compared with
    champion: GateScores | None = None  # that champion's figures on the same sessions
    candidate: GateScores | None = None  # the candidate's, on the same sessions

    @property
    def champion_median_error_m(self) -> float | None:
        return self.champion.median_error_m if self.champion else None

    def tags(self) -> dict[str, str]:
        tags = {"gate_promoted": str(self.promoted).lower(), "gate_reason": self.reason}
        if self.champion_version is not None:
            tags["gate_champion_version"] = str(self.champion_version)
        for who, scores in (("champion", self.champion), ("candidate", self.candidate)):
            for name, value in asdict(scores).items() if scores else ():
                tags[f"gate_{who}_{name}"] = repr(float(value))  # exact: it is reported
        return tags

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> "GateDecision":
        champion = tags.get("gate_champion_version")
        return cls(promoted=tags["gate_promoted"] == "true", reason=tags["gate_reason"],
                   champion_version=int(champion) if champion else None,
                   champion=_scores_from(tags, "champion"), candidate=_scores_from(tags, "candidate"))

    def at_completion(self, version: int, champion_now: int | None) -> "GateDecision":
        """The decision to apply when the version's aliases are set: a promotion stands while the
        champion is still the one it was compared with (or already this version); a champion that
        moved meanwhile was never compared with, so the gate fails closed."""
        if not self.promoted or champion_now in (self.champion_version, version):
            return self
        compared = f"version {self.champion_version}" if self.champion_version is not None else "no champion"
        return GateDecision(False, f"the champion moved to version {champion_now} after this version was "
                                   f"compared with {compared}", self.champion_version, self.champion, self.candidate)


def _scores_from(tags: dict[str, str], who: str) -> GateScores | None:
    names = [f"gate_{who}_{field}" for field in GateScores.__dataclass_fields__]
    return GateScores(*(float(tags[n]) for n in names)) if all(n in tags for n in names) else None


def judge(champion: tuple[int, Path] | None, candidate_onnx: Path, data: VerifiedDataset, test_idx: np.ndarray,
          parity_passed: bool) -> GateDecision:
    """The gate for a new version (its model.onnx), against `champion` (its version and model.onnx,
    None when there is none), both scored in ONNX Runtime on the same sessions `test_idx`."""
    candidate = score_onnx(candidate_onnx, data, test_idx)
    scored = (champion[0], score_onnx(champion[1], data, test_idx)) if champion else None
    decision = decide(parity_passed, candidate, scored)
    log_event(log, "champion gate", stage="register", promoted=decision.promoted, reason=decision.reason,
              champion_version=decision.champion_version)
    return decision


def decide(parity_passed: bool, candidate: GateScores,
           champion: tuple[int, GateScores | None] | None) -> GateDecision:
    """`champion`: (its version, its scores on the same sessions, None when it cannot take them)."""
    version, scores = champion or (None, None)
    if not parity_passed:
        return GateDecision(False, "ONNX Runtime and PyTorch disagree beyond the tolerances (parity check failed)",
                            version, scores, candidate)
    if champion is None:
        return GateDecision(True, "no champion yet", candidate=candidate)
    if scores is None:
        return GateDecision(False, f"champion version {version} takes other captures: not comparable", version,
                            candidate=candidate)
    worse = [what for what, fails in (
        ("median", candidate.median_error_m > scores.median_error_m),
        ("p90", candidate.p90_error_m > scores.p90_error_m * (1 + P90_TOLERANCE)),
        ("calibration", candidate.calibration_gap > scores.calibration_gap + CALIBRATION_TOLERANCE)) if fails]
    verdict = f"worse on {', '.join(worse)}" if worse else "no worse"
    return GateDecision(not worse, f"{verdict}: {candidate.text()} against champion version {version}'s "
                                   f"{scores.text()} on the same sessions", version, scores, candidate)


def score_onnx(onnx_path: Path, data: VerifiedDataset, indices: np.ndarray) -> GateScores | None:
    """An ONNX model's figures on the given sessions; None when its input shape cannot take them."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    samples = session.get_inputs()[0].shape[2]
    if samples != data.manifest.samples_per_capture:
        return None
    errors, d2 = [], []
    for chunk, iq, online, rx in data.chunks(indices):
        position, covariance = session.run(None, {"iq": iq, "rx_position": rx, "rx_online": online})
        truth = data.emitter[chunk, :2]
        errors.append(localization_errors_m(position.astype(np.float64), truth))
        d2.append(mahalanobis_sq(position.astype(np.float64), covariance.astype(np.float64), truth))
    errors, d2 = np.concatenate(errors), np.concatenate(d2)
    return GateScores(float(np.median(errors)), float(np.percentile(errors, 90)), float(np.mean(d2 <= CHI2_2DOF_95)))
