"""The biased-8 experiment (the CDeepEx paper's Fig. 6): asked "why not 8?", who points at the planted square?

``digits_cnn_biased8.onnx`` was trained on digits where every 8 carries a white square in the upper-left corner
(``build_contrastive.py``); it recognises none of the clean test 8s. For the first 50 clean test digits it does not
call 8, each method answers "why your class and not 8?", and we measure the share of the ink the answer *adds*
(the red part) that falls on the square (the square is 25 of 784 pixels, 3.2%):

* CDeepEx with the generator trained on the same biased data: added ink = max(0, G(z_e) - G(z0));
* LRP (composites epsilon-plus and epsilon-gamma-box) and the gradient, contrasted as the paper built its
  baselines: M_w = R(true) - w R(8) for w = 0.005, 0.010, ..., 2; M_w is kept when imposing it on the input,
  x' = clip(x - 0.5 M_w / max|M_w|, 0, 1), lowers the true class's probability and raises the 8's; the answer is
  the mean of the kept maps (M_1 when none is kept), and its added ink = max(0, -M).

Prints the numbers (also ``docs/figures/biased8_experiment.json``) and draws ``docs/figures/biased8.png``.
About a minute on one CPU core::

    python models/biased8_experiment.py [--count 50]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FIGURES = HERE.parent / "docs" / "figures"
sys.path.insert(0, str(HERE))
WEIGHTS = np.arange(1, 401) * 0.005
STRENGTH = 0.5
PROBE = 8


def test_inputs(model, count: int):
    """The first `count` clean test digits the biased classifier does not call 8 (clean 8s included)."""
    from build import cnn_input, load_split

    _, (images, labels) = load_split()
    x = cnn_input(images)
    keep = np.flatnonzero(model.scores(x).argmax(1) != PROBE)[:count]
    return x[keep], labels[keep]


def paper_contrast(model, x: np.ndarray, relevance_true: np.ndarray, relevance_probe: np.ndarray,
                   true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(maps (N, ...), kept weights per input): the paper's weighted-difference construction (module docstring)."""
    before = model.probabilities(x)
    maps, kept = np.empty_like(relevance_true, dtype=np.float64), np.zeros(len(x), dtype=int)
    for i in range(len(x)):
        candidates = relevance_true[i][None] - WEIGHTS.reshape(-1, 1, 1, 1) * relevance_probe[i][None]
        scale = np.abs(candidates).reshape(len(WEIGHTS), -1).max(axis=1).reshape(-1, 1, 1, 1)
        imposed = np.clip(x[i][None] - STRENGTH * candidates / np.maximum(scale, 1e-12), 0, 1).astype(np.float32)
        after = model.probabilities(imposed)
        good = (after[:, true[i]] < before[i, true[i]]) & (after[:, PROBE] > before[i, PROBE])
        kept[i] = good.sum()
        maps[i] = candidates[good].mean(axis=0) if good.any() else relevance_true[i] - relevance_probe[i]
    return maps, kept


def square_share(added: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) share of the added ink (non-negative maps) that lies on the square."""
    total = added.reshape(len(added), -1).sum(axis=1)
    return (added * mask).reshape(len(added), -1).sum(axis=1) / np.maximum(total, 1e-12)


def baseline_maps(model, x: np.ndarray, true: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from onnxplain.methods import make_method
    from onnxplain.targets import Target

    methods = {"LRP epsilon-plus": ("lrp", {"composite": "epsilon-plus"}),
               "LRP epsilon-gamma-box": ("lrp", {"composite": "epsilon-gamma-box"}),
               "gradient": ("gradient", {})}
    out = {}
    for label, (name, params) in methods.items():
        method = make_method(name, progress=False, **params)
        for_true = np.stack([method.explain(model, x[i:i + 1], Target(index=int(true[i]))).relevance[0]
                             for i in range(len(x))])
        for_probe = method.explain(model, x, Target(index=PROBE)).relevance
        out[label] = paper_contrast(model, x, for_true, for_probe, true)
    return out


def figure(x, maps: dict[str, np.ndarray], picks: list[int], shares: dict[str, np.ndarray], square):
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from onnxplain.viz import overlay_rgb

    fig = Figure(figsize=(1.9 * (1 + len(maps)), 1.9 * len(picks) + 0.5), dpi=100)
    grid = fig.subplots(len(picks), 1 + len(maps), squeeze=False)
    for r, i in enumerate(picks):
        grid[r][0].imshow(x[i, 0], cmap="gray", vmin=0, vmax=1)
        for c, (name, added_map) in enumerate(maps.items(), start=1):
            grid[r][c].imshow(overlay_rgb(x[i, 0], added_map[i, 0]))
            grid[r][c].set_title(f"{name}\nsquare {shares[name][i]:.0%}" if r == 0 else f"{shares[name][i]:.0%}",
                                 fontsize=7)
        for ax in grid[r]:
            ax.add_patch(Rectangle((square[1].start - 0.5, square[0].start - 0.5), square[1].stop - square[1].start,
                                   square[0].stop - square[0].start, fill=False, edgecolor="lime", linewidth=0.8))
            ax.set_xticks([])
            ax.set_yticks([])
    grid[0][0].set_title("input (why not 8?)", fontsize=7)
    fig.suptitle("red: ink the answer adds to make an 8, blue: ink it removes; green box: the planted square",
                 fontsize=8)
    fig.tight_layout()
    return fig


def main(argv=None) -> None:
    import torch

    import onnxplain
    from build_contrastive import SQUARE, square_mask
    from onnxplain.methods.contrastive import CDeepEx, contrast_map
    from onnxplain.targets import Target

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=50, help="test digits explained")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = onnxplain.load(HERE / "digits_cnn_biased8.onnx")
    x, labels = test_inputs(model, args.count)
    true = model.scores(x).argmax(1)
    mask = square_mask()[None]

    began = time.perf_counter()
    cdeepex = CDeepEx(str(HERE / "digits_generator_biased8.onnx"), progress=True).explain(model, x, Target(index=PROBE))
    seconds = time.perf_counter() - began
    signed = {"CDeepEx": contrast_map(cdeepex)}
    kept = {}
    for label, (contrast, weights_kept) in baseline_maps(model, x, true).items():
        signed[label], kept[label] = -contrast, weights_kept  # red (positive) = ink to add
    shares = {name: square_share(np.clip(m, 0, None), mask) for name, m in signed.items()}

    numbers = {"inputs": len(x), "clean_8s_among_inputs": int((labels == PROBE).sum()),
               "square_area_share": float(mask.mean()),
               "cdeepex_constraints_hold": float(cdeepex.diagnostics["all"].mean()),
               "cdeepex_seconds": round(seconds, 1),
               "mean_share_of_added_ink_on_square": {k: float(v.mean()) for k, v in shares.items()},
               "median_share_of_added_ink_on_square": {k: float(np.median(v)) for k, v in shares.items()},
               "inputs_where_method_beats_all_baselines": float(np.mean(
                   shares["CDeepEx"] > np.max([v for k, v in shares.items() if k != "CDeepEx"], axis=0))),
               "baseline_inputs_with_a_kept_weight": {k: float((v > 0).mean()) for k, v in kept.items()},
               "command": f"python models/biased8_experiment.py --count {args.count}"}
    print(json.dumps(numbers, indent=2))
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / "biased8_experiment.json").write_text(json.dumps(numbers, indent=2) + "\n")
    picks = list(range(min(4, len(x))))
    figure(x, signed, picks, shares, SQUARE).savefig(FIGURES / "biased8.png")
    print(f"wrote {FIGURES / 'biased8.png'} and biased8_experiment.json")


if __name__ == "__main__":
    main()
