"""What `heimdall-training models list|show|compare` print: the registered model's versions as MLflow
keeps them (aliases, the facts and the gate's decision in their tags, the description) and as the
models store holds them (model.json, model.onnx).

`compare` scores both versions in ONNX Runtime on the same held-out sessions: the test split of the
dataset the newer version was trained on, split as its job split it (the card's configuration).
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from foundation.logs import format_km, printable
from foundation.settings import Settings
from training.mlflow_model import CARD_FILE, ONNX_FILE
from training.promote import PROMOTE_EVENT, PROMOTE_MOVED, PROMOTE_REASON, PROMOTE_REPLACES, found_or_none
from training.mlflow_calls import mlflow_errors
from training.registry import PENDING, STATE, ModelRegistry

FIGURES = (("median_error_m", "median error"), ("p90_error_m", "p90 error"), ("mean_error_m", "mean error"))
COVERAGES = (("coverage_1sigma", "coverage 1σ", 0.393), ("coverage_2sigma", "coverage 2σ", 0.865),
             ("coverage_95", "coverage 95%", 0.95))


class UnknownVersion(ValueError):
    """The model has no such version (the command line reports it as bad input)."""


def open_registry(settings: Settings) -> ModelRegistry:
    from foundation.object_store import open_store

    return ModelRegistry(settings.mlflow_tracking_uri, settings.model_name,
                         open_store(settings.models_uri, settings.s3.credentials()))


def all_versions(registry: ModelRegistry) -> tuple[list, dict[int, list[str]]]:
    """Every version, newest first, and the aliases by version number (search results carry none).
    Raises RegistryError."""
    name = registry.model_name
    with mlflow_errors("read the model"):
        model = found_or_none(lambda: registry.client.get_registered_model(name))
        if model is None:  # no job has registered one yet
            return [], {}
        versions = registry.client.search_model_versions(f"name='{name}'")
    by_version: dict[int, list[str]] = {}
    for alias, number in sorted(model.aliases.items()):
        by_version.setdefault(int(number), []).append(alias)
    return sorted(versions, key=lambda v: -int(v.version)), by_version


def gate_text(tags: dict[str, str]) -> str:
    """The champion gate's decision in a word or two, and whether ops promoted the version since."""
    if tags.get(STATE) == PENDING:
        return "registering"
    text = {"true": "promoted", "false": "not promoted"}.get(tags.get("gate_promoted", ""), "-")
    return text + (", then by ops" if tags.get(PROMOTE_MOVED) else "")


def figure(tags: dict[str, str], key: str) -> str:
    return format_km(float(tags[key])) if key in tags else "-"


def versions_table(registry: ModelRegistry) -> str:
    """Newest first: version, aliases, dataset, test median and p90, created, the gate's decision."""
    versions, aliases = all_versions(registry)
    if not versions:
        return f"{registry.model_name}: no versions yet"
    lines = [f"{registry.model_name}: {len(versions)} version(s)",
             f"  {'VERSION':>7}  {'ALIASES':20}  {'DATASET':20}  {'MEDIAN':>10}  {'P90':>10}  {'CREATED':16}  GATE"]
    for v in versions:
        tags, number = v.tags, int(v.version)
        created = datetime.fromtimestamp(int(v.creation_timestamp) / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
        lines.append(f"  {number:>7}  {','.join(aliases.get(number, [])) or '-':20}  "
                     f"{printable(tags.get('trained_on', '-')):20}  {figure(tags, 'test_median_error_m'):>10}  "
                     f"{figure(tags, 'test_p90_error_m'):>10}  {created:16}  {gate_text(tags)}")
    return "\n".join(lines)


def find_version(registry: ModelRegistry, number: int) -> tuple[object, list[str]]:
    """The MLflow version and its aliases. Raises UnknownVersion, RegistryError."""
    versions, aliases = all_versions(registry)
    for version in versions:
        if int(version.version) == number:
            return version, aliases.get(number, [])
    raise UnknownVersion(f"{registry.model_name} has no version {number}")


def read_card(registry: ModelRegistry, number: int) -> dict | None:
    """The version's model.json from the models store; None while it is not there (still registering)."""
    try:
        return json.loads(registry.store.read_bytes(f"{registry.model_name}/{number}/{CARD_FILE}"))
    except FileNotFoundError:
        return None


def version_report(registry: ModelRegistry, number: int) -> str:
    """One version: aliases, description, dataset and sessions, test figures, baselines, the gate's
    decision, an ops promotion, its job and run, and where its files are. Raises UnknownVersion."""
    version, aliases = find_version(registry, number)
    tags, card, prefix = version.tags, read_card(registry, number), f"{registry.model_name}/{number}"
    lines = [f"{registry.model_name} version {number}  (aliases: {', '.join(aliases) or 'none'})"]
    lines += [f"  {line}" for line in (version.description or "(no description)").splitlines()]
    sessions = ", ".join(f"{tags[f'{s}_sessions']} {s}" for s in ("train", "val", "test") if f"{s}_sessions" in tags)
    lines += ["", f"  dataset      {printable(tags.get('trained_on', '-'))}  ({sessions or '?'} sessions)",
              "  test         " + ", ".join(f"{label} {figure(tags, 'test_' + key)}" for key, label in FIGURES)]
    baselines = sorted({k[len("baseline_"):-len("_median_error_m")] for k in tags
                        if k.startswith("baseline_") and k.endswith("_median_error_m")})
    for method in baselines:
        lines.append(f"  baseline     {method}: median {figure(tags, f'baseline_{method}_median_error_m')}, "
                     f"p90 {figure(tags, f'baseline_{method}_p90_error_m')}")
    lines.append(f"  gate         {gate_text(tags)}: {printable(tags.get('gate_reason', 'no decision recorded'))}")
    if tags.get(PROMOTE_EVENT):
        over = tags.get(PROMOTE_REPLACES) or "none"
        lines.append(f"  ops promote  event {tags[PROMOTE_EVENT]} (champion before: {over}): "
                     f"{printable(tags.get(PROMOTE_REASON, ''))}")
    lines += [f"  job          {tags.get('job_id', '-')}, MLflow run {version.run_id}",
              f"  model        models:/{registry.model_name}/{number}  (source {version.source})"]
    if card is not None:
        lines += [f"  model.onnx   {registry.store.uri_of(f'{prefix}/{ONNX_FILE}')}  ({card['onnx']['bytes']} bytes, "
                  f"sha256 {card['onnx']['sha256'][:12]}…)",
                  f"  model.json   {registry.store.uri_of(f'{prefix}/{CARD_FILE}')}"]
    return "\n".join(lines)


def onnx_metrics(onnx_path: Path, data, indices: np.ndarray) -> dict[str, float] | None:
    """The card's metrics for an ONNX model on the given sessions; None when it cannot take their captures."""
    import onnxruntime as ort

    from training.metrics import localization_metrics

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    if session.get_inputs()[0].shape[2] != data.manifest.samples_per_capture:
        return None
    positions, covariances = [], []
    for _, iq, online, rx in data.chunks(indices):
        feeds = {"iq": iq, "rx_position": rx, "rx_online": online}
        position, covariance = session.run(["position", "covariance"], feeds)
        positions.append(position.astype(np.float64))
        covariances.append(covariance.astype(np.float64))
    return localization_metrics(np.concatenate(positions), np.concatenate(covariances), data.emitter[indices, :2])


def held_out_sessions(settings: Settings, card: dict):
    """The dataset a card's version was trained on, split as its job split it, and its test sessions."""
    from foundation.train_config import TrainConfig
    from training.pipeline import open_dataset

    training = card["training"]
    data = open_dataset(settings, TrainConfig(**training["config"]), training["dataset"]["uri"])
    return data, data.indices("test")


def comparison(settings: Settings, registry: ModelRegistry, first: int, second: int) -> str:
    """Both versions' test metrics on the same sessions, side by side. Raises UnknownVersion."""
    numbers = sorted({first, second})
    for number in numbers:
        find_version(registry, number)
    cards = {n: read_card(registry, n) for n in numbers}
    if missing := [n for n, card in cards.items() if card is None]:
        raise UnknownVersion(f"version {missing[0]} has no model.json in the models store (still registering?)")
    newer = cards[numbers[-1]]
    data, indices = held_out_sessions(settings, newer)
    with tempfile.TemporaryDirectory() as tmp:
        scores = {}
        for n in numbers:
            path = Path(tmp) / f"{n}.onnx"
            registry.store.download(f"{registry.model_name}/{n}/{ONNX_FILE}", path)
            scores[n] = onnx_metrics(path, data, indices)
    dataset = newer["training"]["dataset"]
    return side_by_side(registry.model_name, numbers, scores, cards,
                        f"{dataset['id']} v{dataset['version']}, test split ({len(indices)} sessions, as "
                        f"version {numbers[-1]} was trained)")


def side_by_side(name: str, numbers: list[int], scores: dict, cards: dict, where: str) -> str:
    """One column per version: errors, coverages beside their ideal, NLL, and the dataset it was trained on."""
    def row(label: str, cell, ideal: str = "") -> str:
        return f"  {label:14}" + "".join(f"{cell(scores[n]) if scores[n] else '-':>16}" for n in numbers) + ideal

    lines = [f"{name}: versions {' and '.join(map(str, numbers))} on {where}",
             f"  {'':14}" + "".join(f"{'version ' + str(n):>16}" for n in numbers)]
    lines += [row(label, lambda s, key=key: format_km(s[key])) for key, label in FIGURES]
    lines += [row(label, lambda s, key=key: f"{s[key]:.3f}", f"   (ideal {ideal:.3f})")
              for key, label, ideal in COVERAGES]
    lines.append(row("NLL", lambda s: f"{s['nll']:.2f}"))
    trained = {n: "{id} v{version}".format(**cards[n]["training"]["dataset"]) for n in numbers}
    lines.append(f"  {'trained on':14}" + "".join(f"{printable(trained[n]):>16}" for n in numbers))
    if unscored := [n for n in numbers if scores[n] is None]:
        lines.append(f"  -: version(s) {unscored} take captures of another length than these sessions")
    return "\n".join(lines)
