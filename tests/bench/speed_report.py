"""`reports/speed.md` from the measurements of `python -m tests.bench.speed`."""

from __future__ import annotations

import statistics
from datetime import datetime
from pathlib import Path

from tests.bench.speed_inference import SERVICE_OPTIONS, goals


def _median(rows: list[dict], key) -> float:
    return statistics.median(key(row) for row in rows)


def _verdict(ok: bool | None) -> str:
    return "reported" if ok is None else ("**met**" if ok else "**missed**")


def inference_goal_rows(inference: list[dict], sizes: str) -> list[tuple]:
    """Issue 22's goals for the served model, each figure on every dataset (met when met on every one)."""
    rows = []
    for per_size in zip(*(goals(row) for row in inference)):  # one goal, on each dataset
        what, _, goal, _ = per_size[0]
        rows.append((f"served radio map, ONNX Runtime (service's options): {what}, on {sizes}",
                     " / ".join(f"{value:.2f}" for _, value, _, _ in per_size), goal,
                     all(met for *_, met in per_size)))
    return rows


def headline(results: dict) -> list[str]:
    """The issue's table: each figure, the goal, and whether this run met it."""
    service, rss, rates = results["service"], results["rss"], results["rates"]
    inference = results["inference"] + results["areas"]
    overhead = {mode: _median(rows, lambda r: r["total_s"] - r["fit_s"]) for mode, rows in service.items()}
    child = {mode: _median(rows, lambda r: r["child_start_s"]) for mode, rows in service.items()}
    rss_ratio = rss[-1]["peak_rss_mb"] / rss[0]["peak_rss_mb"]
    cpu = next(r for r in rates if r["device"] == "cpu")
    speedups = [{b["batch"]: b["torch_ms"] / b["ort_ms"][SERVICE_OPTIONS] for b in size["batches"]}
                for size in inference]
    sizes = " / ".join(f"{size['dataset']} ({size['train_sessions']:,} training sessions)" for size in inference)
    rows = [
        ("tiny job: median (`dataset.ready` → `model.registered`) − `fit`, warm spare",
         f"{overhead['warm']:.1f} s" if "warm" in overhead else "not built yet", "≤ 3 s",
         overhead["warm"] <= 3 if "warm" in overhead else None),
        ("the same with the warm spare disabled", f"{overhead['cold']:.1f} s", "reported", None),
        ("child start (accepted → training.started), cold / warm",
         f"{child['cold'] / child['warm']:.1f}× ({child['cold']:.1f} s / {child['warm']:.1f} s)"
         if "warm" in child else f"cold {child['cold']:.1f} s", "≥ 4×",
         child["cold"] / child["warm"] >= 4 if "warm" in child else None),
        (f"peak RSS at {rss[0]['sessions']:,} and {rss[-1]['sessions']:,} sessions",
         f"{rss_ratio:.2f} ({rss[0]['peak_rss_mb']:.0f} MB → {rss[-1]['peak_rss_mb']:.0f} MB)", "ratio ≤ 1.10",
         rss_ratio <= 1.10),
        (f"loader / model sessions/s (`{cpu['preset']}` train step, num_workers {cpu['num_workers']})",
         f"{cpu['loader_per_s'] / cpu['model_per_s']:.0f}× ({cpu['loader_per_s']:.0f} / {cpu['model_per_s']:.1f})",
         "≥ 1.5×", cpu["loader_per_s"] / cpu["model_per_s"] >= 1.5),
        (f"ONNX Runtime / PyTorch eager, batch 1 and 64 (service's ORT options; served radio map on {sizes})", " and ".join(" / ".join(f"{s[batch]:.2f}×" for s in speedups) for batch in (1, 64)),
         "≥ 1.5× at batch 1", all(s[1] >= 1.5 for s in speedups)),
        *inference_goal_rows(inference, sizes),
    ]
    return ["| figure | this run | goal | |", "|---|---|---|---|",
            *[f"| {name} | {value} | {goal} | {_verdict(ok)} |" for name, value, goal, ok in rows]]


def inference_details(inference: list[dict]) -> list[str]:
    """What the served graph holds on each dataset, and its median ms per call on each engine."""
    lines = ["## The served model (radio map): its graph and median ms per call (1024 samples a capture)", "",
             "| dataset | receivers | sessions | training sessions (in the graph) | grid km | cell m | cells (block side) | ONNX MB "
             "| fit + export s | load |", "|---|---|---|---|---|---|---|---|---|---|",
             *[f"| {r['dataset']} | {r['receivers']} | {r['sessions']:,} | {r['train_sessions']:,} ({r['memory_sessions']:,}) | "
               f"{r['area_km'][0]:.1f} × {r['area_km'][1]:.1f} | {r['cell_m']:.0f} | {r['cells']:,} "
               f"({r['refine_stride']}) | {r['onnx_mb']:.2f} | {r['fit_and_export_s']:.0f} | {r['load_average']:.1f} |"
               for r in inference], "",
             "Block side > 1: the posterior is evaluated on blocks of that many cells a side, then cell by cell on "
             "each session's 32 likeliest blocks (`training/radio_map/refine.py`).", ""]
    names = list(inference[0]["batches"][0]["ort_ms"])
    lines += ["| dataset | batch | torch eager | " + " | ".join(f"ORT {n}" for n in names) + " |",
              "|---|---|---|" + "---|" * len(names)]
    for size in inference:
        for r in size["batches"]:
            cells = [f"{ms:.2f} ({r['torch_ms'] / ms:.2f}×)" for ms in r["ort_ms"].values()]
            lines.append(f"| {size['dataset']} | {r['batch']} | {r['torch_ms']:.2f} ({r['torch_threads']} "
                         "threads) | " + " | ".join(cells) + " |")
    return lines + ["", "Load: the 1-minute load average when the size's timings ended (the machine is shared)."]


def details(results: dict) -> list[str]:
    lines = ["## Peak RSS of the `train` child (tiny preset, 2 epochs, batch 512, 128 samples)", "",
             "| sessions | peak RSS MB | wall s |", "|---|---|---|",
             *[f"| {r['sessions']:,} | {r['peak_rss_mb']:.0f} | {r['wall_s']:.0f} |" for r in results["rss"]],
             "", "## Loader and model, sessions/s (3,000 sessions × 7 receivers × 1024 samples)", "",
             "| preset | device | batch | num_workers | loader | train step | loader / model |", "|---|---|---|---|---|---|---|",
             *[f"| {r['preset']} | {r['device']} | {r['batch_size']} | {r['num_workers']} | {r['loader_per_s']:.0f} "
               f"| {r['model_per_s']:.1f} | {r['loader_per_s'] / r['model_per_s']:.0f}× |" for r in results["rates"]],
             "", *inference_details(results["inference"] + results["areas"]),
             "", "## The tiny job through `serve`, medians in s", "",
              "| spare | jobs | waited for the spare's imports | publish → accepted | child start | started → registered "
              "| total | fit | total − fit |",
              "|---|---|---|---|---|---|---|---|---|"]
    for mode, rows in results["service"].items():
        cells = [_median(rows, lambda r, k=k: r.get(k, 0.0)) for k in ("spare_wait_s", "accept_s", "child_start_s",
                                                                       "after_start_s", "total_s", "fit_s")]
        lines.append(f"| {mode} | {len(rows)} | " + " | ".join(f"{c:.2f}" for c in cells)
                     + f" | {_median(rows, lambda r: r['total_s'] - r['fit_s']):.2f} |")
    lines += ["", "One job at a time. With the warm spare on, each dataset is announced once the spare that the "
              "service starts when a job ends has done its imports (`heimdall_training_warm_spare_ready`), as "
              "between real datasets, which arrive hours apart."]
    profile = results["profile"]
    lines += ["", f"## Steps of the tiny `train --json` job ({len(profile)} jobs), median s", "",
              "| step (ends with the line) | median s | first job s |", "|---|---|---|",
              *[f"| → `{step}` | {_median(profile, lambda r, s=step: r[s]):.2f} | {profile[0][step]:.2f} |"
                for step in profile[0]], "",
              "The jobs share one state directory and one dataset version, with a new seed each: the first "
              "job scores the baselines, the later ones find them in the cache (`training/baselines/cache.py`)."]
    return lines


def write_report(results: dict, walls: dict[str, float], out: Path, *, cores: int | None) -> str:
    text = "\n".join([
        "# Speed where users wait (issue 10)", "",
        f"Measured {datetime.now():%Y-%m-%d %H:%M} on this machine ({cores} cores, shared) with "
        f"`python -m tests.bench.speed`; wall time {walls['total']:.0f} s. Medians of at least 5 runs where a "
        "figure is a time; the goals are ratios, but issue 22's for the served model (ms, MB).", "",
        *headline(results), "", *details(results), "",
        "## Wall time of each part", "", "| part | s |", "|---|---|",
        *[f"| {what} | {s:.0f} |" for what, s in walls.items()], ""])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return text
