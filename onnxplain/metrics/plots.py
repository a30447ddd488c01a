"""Figures of an `EvaluationReport`: mean perturbation curves and APEM box plots (matplotlib, written as PNG)."""
from __future__ import annotations

from pathlib import Path

from .perturbation import aopc


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _horizontal() -> dict:
    """Horizontal box plots: `orientation` since matplotlib 3.10, `vert` (deprecated there) before."""
    import matplotlib

    major, minor = (int(part) for part in matplotlib.__version__.split(".")[:2])
    return {"orientation": "horizontal"} if (major, minor) >= (3, 10) else {"vert": False}


def plot_curves(report, path: Path) -> Path:
    """Mean explained score after k perturbation steps: MoRF (solid), LeRF (dashed), random order (black)."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(9.5, 4.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for method, color in zip(report.methods, colors * 4):
        for order, style in (("morf", "-"), ("lerf", "--")):
            if order in method.curves:
                curve = method.curves[order]
                axis.plot(curve.mean(axis=0), style, color=color,
                          label=f"{method.name} {order.upper()} (AOPC {method.aopc(order).mean():.3g})")
    if report.random_curves is not None:
        axis.plot(report.random_curves.mean(axis=0), ":", color="black",
                  label=f"random order (AOPC {aopc(report.random_curves):.3g})")
    axis.set_xlabel("perturbation steps (regions replaced)")
    axis.set_ylabel(f"mean {report.settings['score']} of the explained class")
    axis.set_title(f"Region perturbation, {len(report.inputs)} inputs")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return Path(path)


def plot_apem(report, path: Path) -> Path:
    """Horizontal box plots per method of APEM, eps-, eps+ and APEM_norm over the uncensored cases; shuffled maps
    (grey) below the methods."""
    plt = _pyplot()
    results = [(m.name, m.apem, "tab:blue") for m in report.methods if m.apem is not None]
    results += [(f"shuffled {name}", r.shuffled, "grey") for name, r, _ in results if r.shuffled is not None]
    panels = [("APEM = ε⁺ − ε⁻  (higher is better)", lambda r: r.uncensored(r.scores)),
              ("ε⁻, relevance  (lower is better)", lambda r: r.uncensored(r.eps_minus)),
              ("ε⁺, irrelevance  (higher is better)", lambda r: r.uncensored(r.eps_plus))]
    if results and results[0][1].shuffle_minus is not None:
        panels.append(("APEM_norm  (shuffled maps: about 0)", lambda r: r.uncensored(r.normalized)))
    height = 1.2 + 0.32 * len(results)
    figure, axes = plt.subplots(2, 2, figsize=(11, 2 * height), sharey=True)
    for axis, (title, values) in zip(axes.ravel(), panels):
        boxes = axis.boxplot([values(r) for _, r, _ in results][::-1], patch_artist=True, widths=0.6,
                             flierprops={"markersize": 3}, **_horizontal())
        for patch, (_, _, color) in zip(boxes["boxes"], results[::-1]):
            patch.set_facecolor(color)
            patch.set_alpha(0.35)
        axis.set_yticks(range(1, len(results) + 1), [name for name, _, _ in results][::-1], fontsize=8)
        axis.set_title(title, fontsize=9)
        axis.axvline(0.0, color="black", linewidth=0.5)
    for axis in axes.ravel()[len(panels):]:
        axis.set_visible(False)
    figure.suptitle(f"APEM (stage {report.settings['stage']}, ε step {report.settings['epsilon_step']:g}), "
                    f"{len(report.inputs)} inputs", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Path(path)
