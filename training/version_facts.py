"""What a model version says about itself: what it was trained on, its test figures beside the
baselines', and the champion gate's decision with its reason.

The facts are the version's tags (so they can be searched: `tags.gate_promoted = 'true'`), and
its description is written from those tags alone: whoever completes a registration, the process
that began it or a later attempt (`ModelRegistry.find`), writes the same description and applies
the decision that was made when the version was gated.
"""

from __future__ import annotations

from foundation.logs import format_km
from training.champion_gate import GateDecision
from training.datasets.verified import VerifiedDataset

SPLITS = ("train", "val", "test")
FIGURES = ("median_error_m", "p90_error_m", "mean_error_m")  # the test figures a version is tagged with
BASELINE_FIGURES = ("median_error_m", "p90_error_m")


def version_tags(data: VerifiedDataset, metrics: dict[str, float], baselines: dict[str, dict],
                 decision: GateDecision) -> dict[str, str]:
    """The searchable facts: dataset and sessions, test figures (metres), baselines' figures, gate."""
    manifest = data.manifest
    tags = {"trained_on": f"{manifest.dataset_id} v{manifest.version}",
            **{f"{split}_sessions": str(len(data.indices(split))) for split in SPLITS},
            **{f"test_{key}": f"{metrics[key]:.1f}" for key in FIGURES if key in metrics}}
    for method, figures in sorted(baselines.items()):
        tags.update({f"baseline_{method}_{key}": f"{figures[key]:.1f}" for key in BASELINE_FIGURES})
    return {**tags, **decision.tags()}


def describe(tags: dict[str, str]) -> str:
    """Two lines: what it was trained on; its test figures beside the baselines', and the gate's decision."""
    sessions = ", ".join(f"{tags[f'{split}_sessions']} {split}" for split in SPLITS)
    prefix, suffix = "baseline_", "_median_error_m"
    baselines = [f"{key[len(prefix):-len(suffix)]} {format_km(float(value))}"
                 for key, value in sorted(tags.items()) if key.startswith(prefix) and key.endswith(suffix)]
    figures = f"Test median {format_km(float(tags['test_median_error_m']))}"
    if "test_p90_error_m" in tags:
        figures += f" (p90 {format_km(float(tags['test_p90_error_m']))})"
    beside = f"; baselines' medians: {', '.join(baselines)}" if baselines else ""
    decision = GateDecision.from_tags(tags)
    return (f"Trained on {tags['trained_on']} ({sessions} sessions).\n"
            f"{figures}{beside}. Champion gate: {'promoted' if decision.promoted else 'not promoted'}, "
            f"{decision.reason}.")
