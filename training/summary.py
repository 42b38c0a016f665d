"""The readable end-of-job summary that `train` prints (and `--json` replaces)."""

from __future__ import annotations

from foundation.logs import format_km


def format_summary(result: dict) -> str:
    model, metrics = result["model"], result["metrics"]
    lines = [
        f"job {result['job_id']}: {model['model_name']} version {model['model_version']} registered "
        f"(aliases: {', '.join(model['aliases'])}{'' if model['promoted'] else '; not promoted'})",
        *([f"  (already registered by job {result['already_registered_by']}: nothing was trained again)"]
          if "already_registered_by" in result else []),
        f"  dataset      {result['dataset']['id']} v{result['dataset']['version']}  {result['dataset']['uri']}",
        "  sessions     " + ", ".join(f"{k} {v}" for k, v in result["sessions"].items()),
        f"  model.onnx   {model['onnx']['uri']}  ({model['onnx']['bytes']} bytes, sha256 {model['onnx']['sha256'][:12]}…)",
        f"  model.json   {model['card_uri']}",
        f"  mlflow run   {result['mlflow']['run_id']}  ({result['mlflow']['tracking_uri']})",
        "",
        "  test split             median       p90      mean",
        f"  model            {format_km(metrics['median_error_m']):>10} {format_km(metrics['p90_error_m']):>10} "
        f"{format_km(metrics['mean_error_m']):>10}",
    ]
    for name, b in result["baselines"].items():
        lines.append(f"  {name:<16} {format_km(b['median_error_m']):>10} {format_km(b['p90_error_m']):>10} "
                     f"{format_km(b['mean_error_m']):>10}")
    lines += [
        "",
        f"  coverage   1σ {metrics['coverage_1sigma']:.3f} (ideal 0.393)   2σ {metrics['coverage_2sigma']:.3f} "
        f"(ideal 0.865)   95% {metrics['coverage_95']:.3f} (ideal 0.950)   NLL {metrics['nll']:.2f}",
        "",
        f"  open the MLflow UI:  {result['mlflow']['ui']}",
    ]
    return "\n".join(lines)
