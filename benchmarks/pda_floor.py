"""How fast prediction difference's forward passes can go in torch on this CPU: a floor for the digits CNN.

`benchmarks/pda.py` times the incremental torch engine against the literal per-window loop; its target is 10×.
This script asks what the best hand-written torch code for this one network reaches on the same forward passes
(every stride-1 window's S samples), so that the engine's distance to the target can be read as the engine's
overhead or as the CPU's limit.

`DeltaFloor` is written for the digits CNN's layers only (3×3 convolutions with padding 1, ReLU, 2×2 max pooling,
twice, then two dense layers) and uses what a general engine cannot assume:
- a convolution runs on the change only (sample − x, zero elsewhere: convolutions are linear), on the window's
  own k×k values with padding 2, and its result is added to x's output;
- x's activations are cut once per x into every pooling-aligned region a window can touch, so each row reads
  its region with one `index_select`, and the change lands at one of four offsets (a scatter);
- ReLU is taken after the pooling (they commute), on a quarter of the values;
- the first dense layer reads only the 4×4 cells of pooled maps that a window can change (rows grouped by those
  cells).
It is a measuring stick, not a second implementation: it is checked against onnxruntime on the same inputs.

    python benchmarks/pda_floor.py            # writes its section of benchmarks/README.md
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import onnxplain  # noqa: E402
from onnxplain.allocator import reuse_freed_memory  # noqa: E402
from onnxplain.methods.pda import PredictionDifference  # noqa: E402
from onnxplain.targets import Target  # noqa: E402
from pda import SETTLE_S, literal_loop  # noqa: E402
from readme_section import write_section  # noqa: E402

BEGIN, END = "<!-- benchmarks/pda_floor.py: begin -->", "<!-- benchmarks/pda_floor.py: end -->"
LAYERS = ["Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Reshape", "Gemm", "Relu", "Gemm"]


def digits_cnn_weights(path: Path) -> list[torch.Tensor]:
    """(w1, b1, w2, b2, w3, b3, w4, b4) of a graph with the digits CNN's layers, else ValueError."""
    graph = onnx.load(path).graph
    if [node.op_type for node in graph.node] != LAYERS:
        raise ValueError("DeltaFloor is written for the digits CNN's layer sequence only")
    for node in graph.node:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv" and (attributes.get("kernel_shape") != [3, 3] or attributes.get("pads") != [1] * 4
                                       or attributes.get("strides", [1, 1]) != [1, 1]):
            raise ValueError("DeltaFloor needs 3×3 convolutions with padding 1 and stride 1")
        if node.op_type == "MaxPool" and (attributes.get("kernel_shape") != [2, 2]
                                          or attributes.get("strides") != [2, 2] or any(attributes.get("pads", [0]))):
            raise ValueError("DeltaFloor needs unpadded 2×2 max pooling with stride 2")
    weights = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}
    convs = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    return [weights[name] for node in convs for name in node.input[1:3]]


def _aligned(start: np.ndarray) -> np.ndarray:
    """The even positions at or before `start` - 1: where 2×2 pooling cells cover a change that begins one before
    `start` (a 3×3 convolution's reach)."""
    return 2 * ((start - 1) // 2)


def _regions(source: torch.Tensor, starts: list[int], size: int) -> torch.Tensor:
    """Every size×size region of `source` (C, H, W) whose corner lies on `starts` × `starts` (outside the map:
    zeros), flattened: (len(starts)², C·size²)."""
    low, high = -min(starts[0], 0), max(0, starts[-1] + size - source.shape[-1])
    padded = F.pad(source, (low, high, low, high))
    index = [s + low for s in starts]
    rows = torch.as_tensor(index)
    blocks = padded.unfold(1, size, 1).unfold(2, size, 1)[:, rows][:, :, rows]    # (C, n, n, size, size)
    return blocks.permute(1, 2, 0, 3, 4).reshape(len(starts) ** 2, -1).contiguous()


class DeltaFloor:
    """Logits of the digits CNN for x with every window's samples written in (rows: window-major, S per window).

    `plan(starts, samples)` fixes the windows (their index tables); `__call__(x, values)` does the per-x work
    (x's activations and regions) and the forward passes, as an engine would per explanation."""

    def __init__(self, path: Path, window: int):
        self.w1, self.b1, self.w2, self.b2, self.w3, self.b3, self.w4, self.b4 = digits_cnn_weights(path)
        if window % 2:
            raise ValueError("DeltaFloor's regions are laid out for even windows")
        self.k = window
        self.span1 = window + 4     # conv-1 positions a window changes (k + 2, at offset 0 or 1), in whole cells
        self.span2 = 2 * ((self.span1 // 2 + 4) // 2)   # the same for conv 2 over the pooled cells

    def plan(self, starts: np.ndarray, samples: int) -> None:
        """Index tables for windows at `starts` (W, 2): rows sorted by the pooled-map block their dense layer reads."""
        k, s = self.k, samples
        r0 = _aligned(starts)                            # conv-1 region corners (W, 2)
        c = r0 // 2                                      # first pooled cell a window changes
        q0 = _aligned(c)                                 # conv-2 region corners
        self.starts1 = sorted(set(r0.ravel().tolist()))
        self.cells = sorted(set(c.ravel().tolist()))
        self.starts2 = sorted(set(q0.ravel().tolist()))
        order = np.lexsort((q0[:, 1], q0[:, 0]))
        self.order = torch.as_tensor(order)
        self.back = torch.as_tensor(np.argsort(order))
        starts, r0, c, q0 = starts[order], r0[order], c[order], q0[order]

        def region_ids(values, table):
            ids = [table.index(a) * len(table) + table.index(b) for a, b in values.tolist()]
            return torch.as_tensor(ids).repeat_interleave(s)

        def spread(offsets, size, inner):   # flat positions of an inner×inner block at offsets in size×size
            a = np.arange(inner)
            flat = (offsets[:, 0, None] + a)[:, :, None] * size + (offsets[:, 1, None] + a)[:, None, :]
            return torch.as_tensor(flat.reshape(len(offsets), -1)).repeat_interleave(s, 0)

        self.region1, self.cell_ids, self.region2 = (region_ids(r0, self.starts1), region_ids(c, self.cells),
                                                     region_ids(q0, self.starts2))
        self.starts = starts
        self.scatter1 = spread(starts - 1 - r0, self.span1, k + 2)                # conv 1's change in its region
        self.scatter2 = spread(c - 1 - q0, self.span2, self.span1 // 2 + 2)       # conv 2's change in its region
        blocks = q0 // 2
        self.dense_weights = self._dense_blocks(self.w3.view(len(self.w3), -1, *self._pooled_side()), 1)
        bounds = np.flatnonzero(np.any(np.diff(blocks, axis=0), axis=1)) + 1
        self.runs = [(int(a) * s, int(b) * s, tuple(blocks[a].tolist()))
                     for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(blocks)])]

    def __call__(self, x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """x (1, 1, H, W); values (W, S, 1, k, k) in the windows' order of `plan`: logits (W·S, classes)."""
        k, rows = self.k, values.shape[0] * values.shape[1]
        a1 = F.conv2d(x, self.w1, self.b1, padding=1)
        p1 = F.max_pool2d(a1, 2).relu_()
        a2 = F.conv2d(p1, self.w2, self.b2, padding=1)
        p2 = F.max_pool2d(a2, 2).relu_()
        h = F.linear(p2.flatten(1), self.w3, self.b3)
        regions1 = _regions(a1[0], self.starts1, self.span1)
        pooled1 = _regions(p1[0], self.cells, self.span1 // 2)
        inside1 = _regions(torch.ones_like(p1[0]), self.cells, self.span1 // 2)
        regions2 = _regions(a2[0], self.starts2, self.span2)
        bases = self._dense_blocks(p2[0])

        own = x[0, 0].unfold(0, k, 1).unfold(1, k, 1)[self.starts[:, 0], self.starts[:, 1]]      # (W, k, k)
        ordered = values.index_select(0, self.order)
        change = (ordered - own[:, None, None]).reshape(rows, 1, k, k)
        grown = F.conv2d(change, self.w1, padding=2).flatten(2)                       # (R, C1, (k+2)²)
        maps = regions1.index_select(0, self.region1).view(rows, grown.shape[1], -1)
        maps.scatter_add_(2, self.scatter1[:, None].expand_as(grown), grown)
        side = self.span1
        cells = _pool(maps.view(rows, -1, side, side)).flatten(1)
        change = (cells - pooled1.index_select(0, self.cell_ids)).mul_(inside1.index_select(0, self.cell_ids))
        side1 = side // 2
        grown = F.conv2d(change.view(rows, -1, side1, side1), self.w2, padding=2).flatten(2)
        maps = regions2.index_select(0, self.region2).view(rows, grown.shape[1], -1)
        maps.scatter_add_(2, self.scatter2[:, None].expand_as(grown), grown)
        side = self.span2
        cells = _pool(maps.view(rows, -1, side, side)).flatten(1)
        hidden = h.expand(rows, -1).clone()
        for first, last, block in self.runs:
            hidden[first:last].addmm_(cells[first:last] - bases[block], self.dense_weights[block])
        logits = F.linear(hidden.relu_(), self.w4, self.b4)
        return logits.view(len(self.order), -1, logits.shape[1]).index_select(0, self.back).flatten(0, 1)

    def _pooled_side(self) -> tuple[int, int]:
        side = self.w3.shape[1] // self.w2.shape[0]
        return int(round(side ** 0.5)), int(round(side ** 0.5))

    def _dense_blocks(self, maps: torch.Tensor, lead: int = 0) -> dict:
        """Per block of pooled cells a window can change: the block's entries of `maps` (x's pooled map (C, h, w),
        or the first dense layer's weights (out, C, h, w) with lead=1), flattened; zeros outside the map."""
        size, side = self.span2 // 2, maps.shape[-1]
        corners = sorted({q // 2 for q in self.starts2})
        low, high = -min(corners[0], 0), max(0, corners[-1] + size - side)
        padded = F.pad(maps, (low, high, low, high))
        blocks = {(a, b): padded[..., a + low:a + low + size, b + low:b + low + size].reshape(*maps.shape[:lead], -1)
                  for a in corners for b in corners}
        return {key: block.T.contiguous() for key, block in blocks.items()} if lead else blocks


def _pool(maps: torch.Tensor) -> torch.Tensor:
    """2×2 max pooling by strided maxima, then ReLU (they commute), on (R, C, 2n, 2n)."""
    rows = torch.maximum(maps[..., 0::2, :], maps[..., 1::2, :])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2]).relu_()


def _forward_parts(floor: DeltaFloor, x: torch.Tensor, values: torch.Tensor, calls: int = 5) -> dict[str, float]:
    """Milliseconds per call of the floor's convolutions, maxima, moves (gathers, scatters, copies), dense
    products and the rest (torch profiler, self time)."""
    from torch.profiler import ProfilerActivity, profile
    groups = {"convolutions": ("convolution",), "maxima": ("maximum",), "moves": ("index", "scatter", "copy_", "clone"),
              "dense": ("addmm", "linear", "mm")}
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(calls):
            floor(x, values)
    spent = dict.fromkeys([*groups, "rest"], 0.0)
    for event in prof.key_averages():
        group = next((g for g, names in groups.items() if any(n in event.key for n in names)), "rest")
        spent[group] += event.self_cpu_time_total / 1e3 / calls
    return spent


def _timed(fn) -> float:
    time.sleep(SETTLE_S)
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def case(sampler: str, rounds: int) -> dict:
    """Literal loop, the torch engine and the floor on the digits CNN (k=4, S=10, stride 1; l=8 for the conditional
    sampler), interleaved."""
    path = ROOT / "models" / "digits_cnn.onnx"
    model = onnxplain.load(path)
    samples = ROOT / "models" / "samples"
    x, reference = np.load(samples / "digit3_cnn.npy")[None], np.load(samples / "digits_reference_cnn.npy")
    ring = dict(padding=2) if sampler == "conditional" else {}   # l = k + 2 padding: the conditional's patch
    params = dict(reference=reference, progress=False, window=4, samples=10, sampler=sampler, stride=1, **ring)
    literal, engine = PredictionDifference(**params), PredictionDifference(**params, device="cpu")
    setup = literal.prepare(model, x.shape[1:])
    engine.prepare(model, x.shape[1:])
    engine.explain(model, x, Target())                    # warm: executor check, x's activations
    model.run(x)
    values = setup.sampler.sample(setup.geometry.to_grid(x)[0], np.arange(len(setup.grid)), literal.samples,
                                  literal.seed)           # (W, S, 1, k, k): the samples both others draw
    floor = DeltaFloor(path, 4)
    floor.plan(setup.grid.starts, values.shape[1])
    batch = np.repeat(x, values.shape[0] * values.shape[1], axis=0).reshape(values.shape[:2] + x.shape[1:])
    for w, (i, j) in enumerate(setup.grid.starts):
        batch[w, :, :, i:i + 4, j:j + 4] = values[w]
    want = model.run(batch.reshape(-1, *x.shape[1:]))["logits"]
    x_t, values_t = torch.from_numpy(x), torch.from_numpy(values)
    with torch.inference_mode():
        got = floor(x_t, values_t).numpy()
    times = {"literal": [], "engine": [], "floor": []}
    for _ in range(rounds):
        times["literal"].append(_timed(lambda: literal_loop(literal, model, x, Target())))
        times["engine"].append(_timed(lambda: engine.explain(model, x, Target())))
        with torch.inference_mode():
            times["floor"].append(_timed(lambda: floor(x_t, values_t)))
    seconds = {name: float(np.median(t)) for name, t in times.items()}
    return {"sampler": sampler, "rows": len(got), **seconds,
            "error": float(np.abs(got - want).max() / np.abs(want).max()),
            "parts": _forward_parts(floor, x_t, values_t)}


def section(rows: list[dict], command: str) -> str:
    lines = [BEGIN, "## Prediction difference: a floor for the digits CNN (`benchmarks/pda_floor.py`)", "",
             f"`{command}` — {torch.get_num_threads()} torch threads, no GPU; medians of interleaved rounds (literal "
             "loop, torch engine, floor), each call after the same pause as `benchmarks/pda.py`. The floor is "
             "`DeltaFloor`: hand-written torch code for this network only (convolutions on the sample's change, "
             "x's activations cut once into pooling-aligned regions, ReLU after pooling, the dense layer on the "
             "changed cells), forward passes only: no sampling, no map. Its logits are checked against "
             "onnxruntime on the same inputs.", "",
             "| sampler | rows | literal loop s | torch engine s | literal / engine | floor s (forward passes) "
             "| literal / floor | needed for 10× s | floor vs onnxruntime (max rel.) | floor's time: convolutions / "
             "maxima / moves / dense / rest ms |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        parts = " / ".join(f"{v:.1f}" for v in r["parts"].values())
        lines.append(f"| {r['sampler']} | {r['rows']} | {r['literal']:.3f} | {r['engine']:.3f} | "
                     f"{r['literal'] / r['engine']:.1f}× | {r['floor']:.4f} | {r['literal'] / r['floor']:.1f}× | "
                     f"{r['literal'] / 10:.4f} | {r['error']:.1e} | {parts} |")
    lines.append("")
    lines.append(END)
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/README.md alone")
    args = parser.parse_args(argv)
    reuse_freed_memory()
    rows = [case(sampler, args.rounds) for sampler in ("conditional", "marginal")]
    text = section(rows, "python benchmarks/pda_floor.py" + (f" --rounds {args.rounds}" if args.rounds != 7 else ""))
    print(text)
    if not args.no_write:
        write_section(text, BEGIN, END)


if __name__ == "__main__":
    main()
