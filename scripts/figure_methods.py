"""The README figure: several explanation methods side by side on the shipped digits CNN and sample digits.

    python scripts/figure_methods.py                     # writes docs/figures/methods.png
    python scripts/figure_methods.py --out x.png --methods gradient occlusion

Every heatmap is computed here, by the library, from the committed model and samples (no stored results).
Each panel is scaled to its own max |R|: red = evidence for the predicted class, blue = against.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "digits_cnn.onnx"
SAMPLES = ROOT / "models" / "samples"
DIGITS = (0, 3, 7, 8)

# name -> (column title, constructor options); the reference set is added for prediction difference
METHODS = {
    "lrp": ("LRP ε+ (epsilon-plus)", {"composite": "epsilon-plus"}),
    "deep-taylor": ("deep Taylor", {}),
    "gradient": ("gradient", {}),
    "pda": ("prediction difference", {"window": 4, "padding": 2, "samples": 10, "sampler": "conditional",
                                      "seed": 0}),
    "occlusion": ("occlusion", {"window": 4, "stride": 2}),
}


def compute(methods: list[str]):
    import onnxplain
    from onnxplain.methods import REGISTRY, make_method

    missing = [m for m in methods if m not in REGISTRY]
    if missing:
        raise SystemExit(f"not registered in onnxplain.methods: {', '.join(missing)}")
    model = onnxplain.load(MODEL)
    x = np.stack([np.load(SAMPLES / f"digit{d}_cnn.npy") for d in DIGITS])
    reference = np.load(SAMPLES / "digits_reference_cnn.npy")
    maps, seconds = [], {}
    for name in methods:
        options = dict(METHODS.get(name, (name, {}))[1])
        if name == "pda":
            options["reference"] = reference
        began = time.perf_counter()
        explanation = make_method(name, progress=False, **options).explain(model, x)
        seconds[name] = time.perf_counter() - began
        maps.append([model.preprocess.relevance_to_map(r) for r in explanation.relevance])
        print(f"{name:>12}: targets {explanation.target.tolist()}, {seconds[name]:.2f} s for {len(x)} digits")
    images = [model.preprocess.tensor_to_image(sample) for sample in x]
    return images, [list(row) for row in zip(*maps)], seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "methods.png")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from onnxplain import viz

    images, maps, _ = compute(args.methods)
    titles = [METHODS.get(m, (m,))[0] for m in args.methods]
    figure = viz.method_grid(images, maps, row_titles=[f"digit {d}" for d in DIGITS], column_titles=titles)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    viz.save_figure(figure, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
