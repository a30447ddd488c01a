"""Build ``digits_vit.onnx``: a tiny vision transformer on the digits, to show LRP through attention.

The 28x28 digit (the CNN's input, ``build.py``) is cut into 4x4 patches (a stride-4 convolution: 49 tokens of width
32), given learned positional embeddings, and passed through two pre-norm encoder blocks (two attention heads, a
GELU MLP), a LayerNorm, the mean over tokens and a linear head. Same split, preprocessing spec and labels as the
CNN; trained with the same seeded recipe (Adam, shuffled mini-batches); checked against onnxruntime before it is
written. Exported by ``torch.onnx.export(dynamo=True)``, opset 18: LayerNormalization stays one op.

    python models/build_transformer.py [--out DIR]     # one to two minutes on 2 cores
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from build import CNN_SPEC, HERE, add_metadata, cnn_input, load_split, op_types, train_classifier

WIDTH, HEADS, BLOCKS, PATCH = 32, 2, 2, 4


def make_vit():
    import torch
    import torch.nn as nn

    class DigitsViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patches = nn.Conv2d(1, WIDTH, PATCH, stride=PATCH)
            self.position = nn.Parameter(torch.zeros(1, (28 // PATCH) ** 2, WIDTH))
            self.blocks = nn.ModuleList(nn.TransformerEncoderLayer(WIDTH, HEADS, 2 * WIDTH, dropout=0.0,
                                                                   activation="gelu", batch_first=True,
                                                                   norm_first=True) for _ in range(BLOCKS))
            self.norm = nn.LayerNorm(WIDTH)
            self.head = nn.Linear(WIDTH, 10)

        def forward(self, image):
            tokens = self.patches(image).flatten(2).transpose(1, 2) + self.position
            for block in self.blocks:
                tokens = block(tokens)
            return self.head(self.norm(tokens).mean(1))

    return DigitsViT()


def train_vit(train, test, epochs: int = 30, batch_size: int = 64):
    """Seeded Adam (lr 2e-3) on shuffled mini-batches, as build.py's CNN; returns (model in eval mode, accuracy)."""
    import torch

    torch.set_num_threads(2)
    model = train_classifier(cnn_input(train[0]), train[1], epochs, batch_size, make_vit)
    with torch.no_grad():
        predicted = model(torch.from_numpy(cnn_input(test[0]))).argmax(1)
    return model, (predicted == torch.from_numpy(test[1])).double().mean().item()


def export_vit(model, path: Path, check_inputs: np.ndarray):
    """Export (input "image" [N,1,28,28], output "logits"), verify against torch, embed the CNN's spec, write."""
    import onnx
    import onnxruntime as ort
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (torch.from_numpy(check_inputs[:2]),), dynamo=True, opset_version=18,
                                    input_names=["image"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("N")},), verbose=False)
    proto = program.model_proto
    proto.doc_string = "digits vision transformer (28x28 grayscale in [0,1]) -> 10 logits; models/build_transformer.py"
    add_metadata(proto, CNN_SPEC)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(torch.from_numpy(check_inputs)).numpy()
    diff = float(np.abs(session.run(["logits"], {"image": check_inputs})[0] - expected).max())
    if not diff < 1e-4:
        raise RuntimeError(f"ViT: onnxruntime and torch differ by {diff}")
    print(f"  ViT onnxruntime vs torch max abs diff {diff:.2e} over {len(check_inputs)} inputs")
    onnx.save(proto, path)
    return proto


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: models/)")
    args = parser.parse_args(argv)
    train, test = load_split()
    model, accuracy = train_vit(train, test)
    print(f"digits_vit test accuracy {accuracy:.4f}")
    proto = export_vit(model, args.out / "digits_vit.onnx", cnn_input(test[0]))
    print(f"  ops: {', '.join(op_types(proto))}")


if __name__ == "__main__":
    main()
