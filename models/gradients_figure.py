"""The gradient methods side by side on the digits CNN (``docs/figures/gradients_digits.png``), with the numbers
quoted in ``docs/gradients.md``: integrated gradients' completeness gap and each method's time on 100 test digits.

    python models/gradients_figure.py
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FIGURES = HERE.parent / "docs" / "figures"
METHODS = {"gradient": {}, "sensitivity": {}, "gradient-x-input": {}, "smoothgrad": {"samples": 25, "sigma": 0.15},
           "integrated-gradients": {"steps": 50}}


def main() -> None:
    import torch

    import onnxplain
    from onnxplain.methods import make_method
    from onnxplain.viz import method_grid, save_figure

    torch.set_num_threads(1)
    model = onnxplain.load(HERE / "digits_cnn.onnx")
    x = np.load(HERE / "samples" / "digits_test100_cnn.npy")
    numbers, maps = {}, {}
    for name, params in METHODS.items():
        method = make_method(name, progress=False, **params)
        began = time.perf_counter()
        explanation = method.explain(model, x)
        seconds = time.perf_counter() - began
        maps[name] = explanation.relevance
        numbers[name] = {"params": params, "seconds_per_input": round(seconds / len(x), 5)}
        if "completeness_gap" in explanation.diagnostics:
            gap = np.abs(explanation.diagnostics["completeness_gap"])
            spread = np.abs(explanation.score - explanation.diagnostics["baseline_score"])
            numbers[name]["median_relative_completeness_gap"] = float(np.median(gap / spread))
    picks = [0, 1, 2, 3]
    figure = method_grid([x[i, 0] for i in picks], [[maps[m][i, 0] for m in METHODS] for i in picks],
                         row_titles=[f"class {int(model.scores(x[i:i + 1]).argmax())}" for i in picks],
                         column_titles=list(METHODS))
    FIGURES.mkdir(parents=True, exist_ok=True)
    save_figure(figure, FIGURES / "gradients_digits.png")
    numbers["command"] = "python models/gradients_figure.py"
    (FIGURES / "gradients_digits.json").write_text(json.dumps(numbers, indent=2) + "\n")
    print(json.dumps(numbers, indent=2))


if __name__ == "__main__":
    main()
