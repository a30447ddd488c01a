"""An `EvaluationReport` as a summary table (markdown, CSV, JSON) and per-image rows.

APEM means and medians are over the uncensored cases (both searches flipped within max_steps); the `censored`
column counts the others, and per-image rows flag them."""
from __future__ import annotations

import csv
import io

import numpy as np

from .perturbation import aopc

COLUMNS = ["method", "aopc_morf", "aopc_lerf", "apem_mean", "apem_median", "apem_norm_mean", "apem_norm_median",
           "eps_minus_median", "eps_plus_median", "censored", "rho_loss", "seconds"]
HEADERS = {"method": "method", "aopc_morf": "AOPC MoRF ↑", "aopc_lerf": "AOPC LeRF ↓", "apem_mean": "APEM mean ↑",
           "apem_median": "APEM median", "apem_norm_mean": "APEM_norm mean", "apem_norm_median": "APEM_norm median",
           "eps_minus_median": "ε⁻ median", "eps_plus_median": "ε⁺ median", "censored": "censored",
           "rho_loss": "ρ(APEM, loss)", "seconds": "explain s"}


def summary_rows(report) -> list[dict]:
    """One row per method, one per method's shuffled maps (APEM baseline), one for the random region order."""
    correlations = report.correlations()
    rows = []
    for method in report.methods:
        row = {"method": method.name, "seconds": method.seconds}
        for order in ("morf", "lerf"):
            values = method.aopc(order)
            if values is not None:
                row[f"aopc_{order}"] = float(values.mean())
        if method.apem is not None:
            row.update(_apem_columns(method.apem))
            if method.name in correlations:
                row["rho_loss"] = correlations[method.name][0]
        rows.append(row)
    for method in report.methods:
        if method.apem is not None and method.apem.shuffled is not None:
            rows.append({"method": f"shuffled {method.name}", **_apem_columns(method.apem.shuffled)})
    if report.random_curves is not None:
        value = aopc(report.random_curves)
        rows.append({"method": "random order", "aopc_morf": value, "aopc_lerf": value})
    return rows


def _apem_columns(result) -> dict:
    row = {"apem_mean": result.mean, "apem_median": _median(result.uncensored(result.scores)),
           "eps_minus_median": _median(result.uncensored(result.eps_minus)),
           "eps_plus_median": _median(result.uncensored(result.eps_plus)), "censored": int(result.censored.sum())}
    if result.shuffle_minus is not None:
        row["apem_norm_mean"] = result.norm_mean
        row["apem_norm_median"] = _median(result.uncensored(result.normalized))
    return row


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else float("nan")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, (int, np.integer)):
        return str(value)
    if isinstance(value, float):
        return "nan" if not np.isfinite(value) else f"{value:.3g}" if abs(value) >= 1000 else f"{value:.3f}"
    return str(value)


def markdown(report, title: str = "Evaluation") -> str:
    rows = summary_rows(report)
    columns = [c for c in COLUMNS if any(c in row for row in rows)]
    lines = [f"## {title}", "", _settings_line(report), ""]
    lines += ["| " + " | ".join(HEADERS[c] for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    pairs = report.pairwise()
    if pairs:
        lines += ["", "APEM per image, method against method (fraction of images):", "",
                  "| method | vs | better | equal | worse |", "|---|---|---|---|---|"]
        lines += [f"| {p.first} | {p.second} | {p.better:.2f} | {p.equal:.2f} | {p.worse:.2f} |" for p in pairs]
    correlations = report.correlations()
    if correlations:
        lines += ["", "Spearman correlation with the cross-entropy loss of the true label (§5.4):", "",
                  "| per-image value | ρ | p |", "|---|---|---|"]
        lines += [f"| {'APEM ' + name if name != 'confidence' else 'top-1 confidence'} | {rho:.3f} | {p:.2g} |"
                  for name, (rho, p) in correlations.items()]
    return "\n".join(lines) + "\n"


def _settings_line(report) -> str:
    s = report.settings
    parts = [f"{len(report.inputs)} input" + ("s" if len(report.inputs) != 1 else "")]
    if report.accuracy is not None:
        parts.append(f"accuracy {report.accuracy:.3f}")
    if "aopc" in s["metrics"]:
        steps = f"{s['steps']} steps" + (f" (every region; {s['steps_asked']} asked)"
                                         if s["steps"] < s["steps_asked"] else "")
        score = f"{s['score']} score" + (" (the graph has no logits)" if s["score"] != s["score_asked"] else "")
        parts.append(f"region perturbation: {s['region']}-wide regions, {steps}, {score}, seed {s['seed']}")
    if "apem" in s["metrics"]:
        parts.append(f"APEM: stage {s['stage']}, ε step {s['epsilon_step']:g}, {s['shuffles']} shuffles")
    return "; ".join(parts) + "."


def summary_csv(report) -> str:
    return _csv(summary_rows(report), COLUMNS)


def per_image_rows(report) -> list[dict]:
    rows = []
    for i, name in enumerate(report.inputs):
        row = {"input": name, "class": int(report.classes[i]), "confidence": float(report.confidence[i])}
        if report.labels is not None:
            row.update(label=int(report.labels[i]), loss=float(report.loss[i]))
        for method in report.methods:
            for order in ("morf", "lerf"):
                values = method.aopc(order)
                if values is not None:
                    row[f"{method.name}_aopc_{order}"] = float(values[i])
            if method.apem is not None:
                row[f"{method.name}_eps_minus"] = float(method.apem.eps_minus[i])
                row[f"{method.name}_eps_plus"] = float(method.apem.eps_plus[i])
                row[f"{method.name}_apem"] = float(method.apem.scores[i])
                row[f"{method.name}_censored"] = bool(method.apem.censored[i])
                if method.apem.shuffle_minus is not None:
                    row[f"{method.name}_apem_norm"] = float(method.apem.normalized[i])
        rows.append(row)
    return rows


def per_image_csv(report) -> str:
    rows = per_image_rows(report)
    return _csv(rows, list(rows[0]))


def as_json(report) -> dict:
    correlations = report.correlations()
    return {
        "inputs": len(report.inputs), "accuracy": report.accuracy, "settings": report.settings,
        "summary": summary_rows(report),
        "pairwise": [vars(p) for p in report.pairwise()],
        "loss_correlation": {name: {"rho": rho, "p": p} for name, (rho, p) in correlations.items()},
        "per_image": per_image_rows(report),
    }


def _csv(rows: list[dict], columns: list[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
