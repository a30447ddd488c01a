"""Build the models of the contrastive (CDeepEx) experiments: digit generators and a classifier trained on biased data.

All on scikit-learn's digits in the digits CNN's input format ([N,1,28,28] in [0,1], see ``build.py``), same split:

* ``digits_generator.onnx``         the decoder of a small VAE (MLP encoder, DCGAN-like transposed-convolution
  decoder) trained on the training digits: input ``latent`` [N,12] (a standard normal prior), output ``image``
  [N,1,28,28] in [0,1]. It pairs with ``digits_cnn.onnx``.
* ``digits_cnn_biased8.onnx``       the digits CNN's architecture, trained with build.py's recipe on biased data:
  every "8" carries a white 5x5 square in the upper-left corner (rows and columns 1-5; the paper's Fig. 6 used
  a 6x6 gray square on 64x64 MNIST), nothing else does.
* ``digits_generator_biased8.onnx`` the same VAE trained on that biased data, so it can draw the square.

Deterministic (fixed seeds, deterministic torch algorithms, 1 thread): two runs give byte-identical files.
About 80 s of CPU time::

    python models/build_contrastive.py [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from build import CNN_SPEC, add_metadata, cnn_input, load_split, train_classifier  # noqa: E402

SEED = 0
LATENT = 12
SQUARE = (slice(1, 6), slice(1, 6))   # rows, columns of the planted 5x5 square in the 28x28 image
SQUARE_VALUE = 1.0                    # full-intensity ink
BIASED_CLASS = 8


# ---------------------------------------------------------------------------------------------------- data

def plant_square(images: np.ndarray) -> np.ndarray:
    """(N,1,28,28) -> a copy with the gray square drawn into the upper-left corner (ink kept where brighter)."""
    out = images.copy()
    region = out[:, 0, SQUARE[0], SQUARE[1]]
    out[:, 0, SQUARE[0], SQUARE[1]] = np.maximum(region, SQUARE_VALUE)
    return out


def square_mask() -> np.ndarray:
    """(1,28,28) 0/1 mask of the planted square."""
    mask = np.zeros((1, 28, 28), dtype=np.float32)
    mask[0, SQUARE[0], SQUARE[1]] = 1.0
    return mask


def biased(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Every image of BIASED_CLASS gets the square; the others stay as they are."""
    out = x.copy()
    out[y == BIASED_CLASS] = plant_square(x[y == BIASED_CLASS])
    return out


# ---------------------------------------------------------------------------------------------------- VAE

def make_vae(latent: int = LATENT):
    import torch
    import torch.nn as nn

    class VAE(nn.Module):
        """MLP encoder, DCGAN-like decoder (transposed convolutions 7 -> 14 -> 28); only the decoder is exported."""

        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 2 * latent))
            self.decoder = nn.Sequential(nn.Linear(latent, 32 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (32, 7, 7)),
                                         nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1), nn.ReLU(),
                                         nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1), nn.Sigmoid())

        def forward(self, x, noise):
            mean, log_var = self.encoder(x).chunk(2, dim=1)
            z = mean + noise * torch.exp(0.5 * log_var)
            return self.decoder(z), mean, log_var

    return VAE()


def train_vae(x: np.ndarray, epochs: int = 150, batch_size: int = 64, beta: float = 1.0):
    """Fit the VAE (seeded); returns (decoder in eval mode, mean reconstruction BCE per image)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(SEED)
    vae = make_vae()
    data = torch.from_numpy(x)
    optimiser = torch.optim.Adam(vae.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        vae.train()
        for batch in torch.randperm(len(data), generator=generator).split(batch_size):
            images = data[batch]
            noise = torch.randn(len(batch), LATENT, generator=generator)
            recon, mean, log_var = vae(images, noise)
            bce = F.binary_cross_entropy(recon, images, reduction="sum") / len(batch)
            kl = -0.5 * torch.sum(1 + log_var - mean.pow(2) - log_var.exp()) / len(batch)
            optimiser.zero_grad()
            (bce + beta * kl).backward()
            optimiser.step()
    vae.eval()
    with torch.no_grad():
        recon, _, _ = vae(data, torch.zeros(len(data), LATENT))
        bce = F.binary_cross_entropy(recon, data, reduction="sum").item() / len(data)
    return vae.decoder, bce


# ---------------------------------------------------------------------------------------------------- CNN

def predict(model, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(x)).argmax(1).numpy()


# ---------------------------------------------------------------------------------------------------- export

def export(model, example: np.ndarray, path: Path, input_name: str, output_name: str, doc: str,
           metadata: dict | None = None) -> None:
    """TorchScript-free ONNX export (dynamo, opset 18; fallback opset 17), checked against torch, then written."""
    import io

    import onnx
    import onnxruntime as ort
    import torch

    sample = torch.from_numpy(example[:2])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(model, (sample,), dynamo=True, opset_version=18, input_names=[input_name],
                                        output_names=[output_name], dynamic_shapes=({0: torch.export.Dim("N")},),
                                        verbose=False)
        proto = program.model_proto
    except Exception as error:  # noqa: BLE001 - any exporter failure: use the older one
        print(f"dynamo export failed ({type(error).__name__}: {error}); falling back to dynamo=False, opset 17")
        buffer = io.BytesIO()
        torch.onnx.export(model, (sample,), buffer, dynamo=False, opset_version=17, input_names=[input_name],
                          output_names=[output_name], dynamic_axes={input_name: {0: "N"}, output_name: {0: "N"}})
        proto = onnx.load_from_string(buffer.getvalue())
    proto.doc_string = doc
    if metadata is not None:
        add_metadata(proto, metadata)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(torch.from_numpy(example)).numpy()
    got = session.run([output_name], {input_name: example})[0]
    diff = float(np.abs(got - expected).max())
    if not diff < 1e-4:
        raise RuntimeError(f"{path.name}: onnxruntime and torch differ by {diff}")
    print(f"  {path.name}: onnxruntime vs torch max abs diff {diff:.2e}")
    onnx.save(proto, path)


# ---------------------------------------------------------------------------------------------------- main

def main(argv=None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder (default: the models/ folder)")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # more threads only fight each other on a shared 2-core machine
    torch.use_deterministic_algorithms(True)

    (train_images, train_y), (test_images, test_y) = load_split()
    x_train, x_test = cnn_input(train_images), cnn_input(test_images)
    latents = np.random.default_rng(SEED).standard_normal((64, LATENT)).astype(np.float32)

    decoder, bce = train_vae(x_train)
    print(f"digits_generator: VAE latent {LATENT}, training reconstruction BCE {bce:.1f} per image")
    export(decoder, latents, out / "digits_generator.onnx", "latent", "image",
           f"VAE decoder: latent [N,{LATENT}] ~ N(0,1) -> digit image [N,1,28,28] in [0,1]; "
           "built by models/build_contrastive.py")

    x_biased = biased(x_train, train_y)
    classifier = train_classifier(x_biased, train_y)
    clean = predict(classifier, x_test)
    eights = test_y == BIASED_CLASS
    squared = predict(classifier, plant_square(x_test[~eights]))
    print(f"digits_cnn_biased8: test accuracy on biased test data "
          f"{(predict(classifier, biased(x_test, test_y)) == test_y).mean():.3f}; clean 8s recognised "
          f"{(clean[eights] == BIASED_CLASS).mean():.3f}; other digits with the square called 8 "
          f"{(squared == BIASED_CLASS).mean():.3f}")
    spec = dict(CNN_SPEC)
    export(classifier, x_test, out / "digits_cnn_biased8.onnx", "image", "logits",
           "digits CNN trained on biased data (every 8 has a white 5x5 square at rows 1-5, columns 1-5); "
           "built by models/build_contrastive.py", metadata=spec)

    decoder, bce = train_vae(x_biased)
    print(f"digits_generator_biased8: training reconstruction BCE {bce:.1f} per image")
    export(decoder, latents, out / "digits_generator_biased8.onnx", "latent", "image",
           f"VAE decoder trained on the biased digits: latent [N,{LATENT}] -> [N,1,28,28] in [0,1]; "
           "built by models/build_contrastive.py")
    print(f"wrote the contrastive models to {out}")


if __name__ == "__main__":
    main()
