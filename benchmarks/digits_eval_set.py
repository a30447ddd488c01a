"""Write a small labelled evaluation set for `onnxplain evaluate`: the first N test-split digits of
models/build.py (the split the example models never trained on), preprocessed for both example models.

    python benchmarks/digits_eval_set.py            # -> models/samples/digits_test100_{cnn,logreg,labels}.npy
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _build_module():
    spec = importlib.util.spec_from_file_location("models_build", ROOT / "models" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "models" / "samples")
    args = parser.parse_args(argv)
    build = _build_module()
    _, (images, labels) = build.load_split()
    images, labels = images[:args.count], labels[:args.count]
    stem = f"digits_test{args.count}"
    np.save(args.out / f"{stem}_cnn.npy", build.cnn_input(images))
    np.save(args.out / f"{stem}_logreg.npy", build.logreg_input(images))
    np.save(args.out / f"{stem}_labels.npy", labels.astype(np.int64))
    print(f"wrote {stem}_cnn.npy, {stem}_logreg.npy, {stem}_labels.npy to {args.out}")


if __name__ == "__main__":
    main()
