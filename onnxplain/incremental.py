"""Incremental forward passes for inputs that differ from one input x only inside a window.

Prediction difference (and occlusion) runs the model on many copies of x, each with one window replaced. Such a
sample changes an early activation only inside that window's zone of influence: the window grown by each
convolution's or pooling's kernel and shrunk by its stride. `WindowRunner` computes x's activations once, then
runs each sample's early layers on crops around its zone only (gathered from x's activations, the sample's
changed values written over them: `crops.py`). A dense layer after a flatten reads only the crop: x's output plus
the product of the row's change with the weights of the crop's entries. Where a zone covers most of its map, or an
op has no rule here (global pooling, other reshapes), the crop is written into a full copy of x's activation and
the rest of the graph runs as usual. The numbers are the full forward pass's (up to float rounding:
`tests/test_incremental.py`); early layers, which hold most of a conv net's work, shrink to a fraction.

Rows that share a window (its S samples) share a *site*: box positions are computed per site and x's activation
is gathered once per site. Before a crop is written, its rows are sorted by where it goes in its patch, when no
other per-row value is alive, so that the writes move slices; the runner restores the callers' row order on the
outputs. Small max poolings run as maxima over strided slices (CPU max pooling kernels are slow on small maps).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from .crops import MAX_GROUPS, Crop, FlatCrop, gather, max_pool_slices, sites_of, write
from .ops.base import AVG_POOL, CONV
from .ops.pooling import lowest_for_padding

MAX_SHARE = 0.5   # a zone covering more of its map than this is computed whole: crops would not save work
POINTWISE = {"Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Clip",
             "Softplus", "Softsign", "Gelu", "Mish", "Erf", "Dropout", "Identity", "BatchNormalization", "LRN", "Neg",
             "Sqrt", "Exp", "Log", "Abs", "Reciprocal", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh",
             "Asinh", "Acosh", "Atanh", "Sign", "Floor", "Ceil", "Round", "Not", "IsNaN", "IsInf",
             "Cast"}                                 # each output position reads its own position (channels too)
ALIGNED = {"Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Concat"}   # operands meet position by position


class WindowRunner:
    """`runner(values, starts)`: the graph's `outputs` for the rows of x with window `values` (R, C, *k) written
    at `starts` (R, d); x is one sample as the model takes it, on the executor's device. The rows run from `entry`,
    where the sample is channels-first (1, C, *spatial): the model input (default), or the layout change right
    after a channels-last input (`passes.channels_first_entry`)."""

    def __init__(self, executor, x: torch.Tensor, outputs: list[str], entry: str | None = None):
        model_input = executor.model.input_name
        self.graph, self.input_name = executor.graph, entry or model_input
        self.channels_last = self.input_name != model_input
        self.outputs = list(outputs)
        self.steps = self.graph.plan(self.outputs, (self.input_name,))
        releases = [list(names) for names in self.graph.releases(self.outputs, (self.input_name,))]
        reads = [i for i, step in enumerate(self.steps) if self.input_name in step.inputs]
        if reads and self.input_name not in self.outputs:
            releases[reads[-1]].append(self.input_name)     # the rows' windows too, once no step reads them
        self.releases = [tuple(names) for names in releases]
        self.peak_row_bytes = 0      # the most memory one row's tensors took at once in a call (sizes batches)
        self.largest_row_elements = 0  # the largest tensor's elements per row (keeps batches under 2^31 elements)
        self._made: list[torch.Tensor] = []   # full maps and patches a step builds besides its outputs
        every = sorted({name for step in self.steps for name in step.outputs if name})
        with torch.inference_mode():
            self.full = self.graph.run({model_input: x}, every + [self.input_name])   # x's activations, batch of 1
        self._padded: dict[tuple, torch.Tensor] = {}

    def __call__(self, values: torch.Tensor, starts: np.ndarray) -> dict[str, torch.Tensor]:
        sites, row_site = sites_of(np.asarray(starts, dtype=np.int64))
        env: dict[str, object] = {self.input_name: Crop(values, sites, row_site)}
        rows, self._order, self._entry = len(values), None, values
        with torch.inference_mode():
            try:
                outputs = self._run(env, rows)
            finally:
                self._made, self._entry = [], None   # also after a failure: what the failed batch built is freed
            if self._order is None:
                return outputs
            back = torch.as_tensor(np.argsort(self._order), device=values.device)
            return {name: value.index_select(0, back) for name, value in outputs.items()}

    def _run(self, env: dict, rows: int) -> dict[str, torch.Tensor]:
        for step, dropped in zip(self.steps, self.releases):
            inputs = [self._value(env, name) for name in step.inputs]
            self._sortable = _sole_row_value(env, step, dropped, rows)
            result = self._cropped(step, inputs)
            if result is None:   # no spatial rule, or not worth it: the step runs on full tensors
                inputs = [self._whole(name, v, rows) if isinstance(v, Crop) else v
                          for name, v in zip(step.inputs, inputs)]
                result = step.op.forward(*inputs)
            results = result if isinstance(result, tuple) else (result,)
            for name, value in zip(step.outputs, results):
                if name:
                    env[name] = value
            self._measure(env.values(), rows)
            for name in dropped:
                env.pop(name, None)
        self._sortable = False
        outputs = {name: self._whole(name, env[name], rows) if isinstance(env[name], Crop) else env[name]
                   for name in self.outputs}
        self._measure(env.values(), rows)        # the outputs made whole are among the step's builds
        return outputs

    def _measure(self, live, rows: int) -> None:
        """Update the per-row memory peaks with the live tensors and what the step built besides them."""
        tensors = [v.values if isinstance(v, Crop) else v for v in live] + self._made
        tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
        self._made = []
        if rows and tensors:
            self.peak_row_bytes = max(self.peak_row_bytes,
                                      -(-sum(t.numel() * t.element_size() for t in tensors) // rows))
            self.largest_row_elements = max(self.largest_row_elements, -(-max(t.numel() for t in tensors) // rows))

    def error(self, executor, window: tuple[int, ...], seed: int = 0) -> float:
        """Largest relative difference to the full forward pass on a probe batch (windows at every corner of the
        map and one in the middle, filled with x's values shifted by seeded noise), run together and row by row:
        which ops run on crops, and how large, depends on the batch."""
        x = self.full[self.input_name]
        spatial = np.array(x.shape[2:])
        size = np.minimum(np.array(window), spatial)
        corners = np.array(np.meshgrid(*[[0, n - k] for n, k in zip(spatial, size)], indexing="ij"))
        starts = np.concatenate([corners.reshape(len(spatial), -1).T, ((spatial - size) // 2)[None]])
        generator = torch.Generator(device="cpu").manual_seed(seed)
        noise = torch.randn((len(starts), x.shape[1], *size), generator=generator).to(x.device)
        each = np.arange(len(starts))                              # every probe window is its own site
        own = gather(x[0], starts, tuple(int(k) for k in size), each)
        if x.dtype.is_floating_point:
            values = own + noise.to(x.dtype) * (float(x.std()) or 1.0)
        else:   # integer inputs (uint8 images cast inside the graph): whole-number shifts within the type's range
            info = torch.iinfo(x.dtype)
            shifted = own.double() + noise.double() * (float(x.double().std()) or 1.0)
            values = shifted.round().clamp(info.min, info.max).to(x.dtype)
        batch = x.expand(len(starts), *x.shape[1:]).clone()
        write(batch, starts, Crop(values, starts, each))
        with torch.inference_mode():   # the whole model on the probe: channels moved back last where x has them so
            want = executor.run(batch.movedim(1, -1).contiguous() if self.channels_last else batch, self.outputs)
        errors = []
        for rows in [slice(None)] + [slice(r, r + 1) for r in range(len(starts))]:   # together, then each alone
            got = self(values[rows], starts[rows])
            errors += [float((got[n] - want[n][rows]).abs().max() / want[n][rows].abs().max().clamp(min=1e-12))
                       for n in self.outputs]
        return max(errors)

    def _value(self, env: dict, name: str):
        if not name:
            return None
        return env[name] if name in env else self.graph.constants[name]

    # ---------------------------------------------------------------- ops on crops
    def _cropped(self, step, inputs: list):
        """The step's output as a Crop, or None when it must run on full tensors."""
        crops = [v for v in inputs if isinstance(v, Crop)]
        op_type, named_outputs = step.node.op_type, [n for n in step.outputs if n]
        if not crops or len(named_outputs) != 1:
            return None
        if op_type in ("Shape", "Size") and isinstance(inputs[0], Crop):   # sizes alone (a held input's batch)
            full = self.full[step.inputs[0]]
            return step.op.forward(full.expand(len(inputs[0].values), *full.shape[1:]))
        others = [name for name, v in zip(step.inputs, inputs) if name and not isinstance(v, Crop)]
        if any(name not in self.graph.constants for name in others):
            return None       # an operand computed at full size (a gate from global pooling, ...)
        if isinstance(crops[0], FlatCrop):
            return self._on_rows(step, inputs, others) if len(crops) == 1 and crops[0] is inputs[0] else None
        if op_type in ("Flatten", "Reshape") and isinstance(inputs[0], Crop):
            return self._flattened(step, inputs[0])
        if op_type in ("Conv", "MaxPool", "AveragePool"):
            return self._windowed(step, inputs) if isinstance(inputs[0], Crop) else None
        if op_type == "Pad":
            return self._shifted(step, inputs) if isinstance(inputs[0], Crop) else None
        if op_type != "BatchNormalization" and any(not _spatially_constant(self.graph.constants[name], crops[0])
                                                   for name in others):
            return None       # a constant that varies over space (BatchNormalization's vectors are per channel)
        if op_type in POINTWISE and len(crops) == 1 and isinstance(inputs[0], Crop):
            if op_type == "Relu" and self._sortable and not _shares_memory(inputs[0].values, self._entry):
                return inputs[0].moved(inputs[0].values.clamp_(min=0))   # no one else holds the values
            return inputs[0].moved(step.op.forward(*[v.values if isinstance(v, Crop) else v for v in inputs]))
        if op_type in ALIGNED and (op_type != "Concat" or _axis(step, inputs[0]) == 1):
            return self._aligned(step, inputs)
        return None

    def _aligned(self, step, inputs: list):
        """Operands on one box (the union of theirs), then the op as it is."""
        crops = [v for v in inputs if isinstance(v, Crop)]
        spatial = self.full[step.outputs[0]].shape[2:]
        if any(self.full[name].shape[2:] != spatial for name, v in zip(step.inputs, inputs) if isinstance(v, Crop)):
            return None       # an operand broadcast over space (a map of height 1 added to a full one, ...)
        low = np.min([c.sites for c in crops], axis=0)
        high = np.max([c.sites + np.array(c.size) for c in crops], axis=0)
        size = np.minimum((high - low).max(axis=0), spatial)
        if np.prod(size) > MAX_SHARE * np.prod(spatial):
            return None
        origin = np.minimum(low, np.array(spatial) - size)
        framed = [self._reframe(name, v, origin, tuple(size)) if isinstance(v, Crop) else v
                  for name, v in zip(step.inputs, inputs)]
        return crops[0].moved(step.op.forward(*framed), origin)

    def _flattened(self, step, crop: Crop):
        """A Flatten or Reshape of (R, C, *spatial) maps to (R, C·prod(spatial)) rows: the crop as it is, read by
        position in the flattened map (None for any other reshape)."""
        before, after = self.full[step.inputs[0]].shape, self.full[step.outputs[0]].shape
        if after != (before[0], int(np.prod(before[1:]))) or step.op.attr("axis", 1) != 1:
            return None
        return FlatCrop(crop.values, crop.sites, crop.row_site, tuple(before[1:]))

    def _on_rows(self, step, inputs: list, others: list[str]):
        """An op on a flattened crop: a dense layer (`_dense`), or a pointwise op whose other operands are scalars
        (per-entry vectors would meet the crop's entries in the wrong places); None for the rest."""
        op_type = step.node.op_type
        if op_type in ("Gemm", "MatMul"):
            return self._dense(step, inputs)
        if op_type in POINTWISE and op_type not in ("BatchNormalization", "LRN") and \
                all(self.graph.constants[name].numel() == 1 for name in others):
            return inputs[0].moved(step.op.forward(inputs[0].values, *inputs[1:]))
        return None

    def _dense(self, step, inputs: list):
        """Gemm or MatMul of flattened maps by a constant B: x's output plus the product of each row's change,
        which lies in its box, with B's rows for the box's entries (a fraction of the full product)."""
        crop, b = inputs[0], inputs[1]
        alpha = step.op.alpha if step.node.op_type == "Gemm" else 1.0
        if step.node.op_type == "Gemm":
            if step.op.trans_a:
                return None
            b = b.transpose(0, 1) if step.op.trans_b else b
        distinct, site_box = sites_of(crop.sites)
        if b.ndim != 2 or len(distinct) > MAX_GROUPS:
            return None
        crop = self._grouped(crop, crop.sites)                # each box's rows in one run, where rows may move
        row_box = site_box[crop.row_site]
        firsts = np.flatnonzero(np.diff(row_box, prepend=-1))
        if len(firsts) > MAX_GROUPS:                          # rows not reordered: the product runs whole
            return None
        index = replace(crop, sites=distinct).flat_index()
        x_flat, y_x = self.full[step.inputs[0]][0], self.full[step.outputs[0]]
        out = torch.empty((len(crop.values), b.shape[1]), dtype=y_x.dtype, device=y_x.device)
        values = crop.values.reshape(len(crop.values), -1)
        for first, last in zip(firsts, np.append(firsts[1:], len(row_box))):
            entries = torch.as_tensor(index[row_box[first]], device=b.device)
            change = values[first:last] - x_flat.index_select(0, entries)
            torch.addmm(y_x, change, b.index_select(0, entries), alpha=alpha, out=out[first:last])
        return out

    def _shifted(self, step, inputs: list):
        """A constant-mode Pad of the spatial axes: the crop's values as they are, at sites moved by the begin pads
        (other modes read mirrored or wrapped positions, negative pads crop the map: None, whole maps)."""
        op, crop = step.op, inputs[0]
        if op.mode != "constant":
            return None
        pairs = op.pairs(crop.values, inputs[1] if len(inputs) > 1 else None, inputs[3] if len(inputs) > 3 else None)
        if any(b or e for b, e in pairs[:2]) or any(b < 0 or e < 0 for b, e in pairs):
            return None
        return crop.moved(crop.values, crop.sites + np.array([b for b, _ in pairs[2:]], dtype=np.int64))

    def _windowed(self, step, inputs: list):
        """A convolution or pooling on the patch that feeds the zone its input crop influences."""
        op, crop = step.op, inputs[0]
        x_full, y_full = self.full[step.inputs[0]], self.full[step.outputs[0]]
        geometry = _window_geometry(op, x_full, inputs)
        if geometry is None:
            return None
        kernel, strides, dilations, begins, pad_value = geometry
        out_spatial = np.array(y_full.shape[2:])
        reach = (np.array(kernel) - 1) * np.array(dilations)
        low = np.maximum(-(-(crop.sites + begins - reach) // strides), 0)             # ceil division
        high = np.minimum((crop.sites + np.array(crop.size) - 1 + begins) // strides, out_spatial - 1)
        # at least one output per axis: a window that no output reads (a stride's gap, an unread end of the map)
        # gets an empty zone, and the box then holds x's own values
        size = np.clip((high - low + 1).max(axis=0), 1, out_spatial)
        if np.prod(size) > MAX_SHARE * np.prod(out_spatial):
            return None
        origin = np.minimum(low, out_spatial - size)
        span = (size - 1) * strides + reach + 1
        patch, crop = self._patch(step.inputs[0], crop, origin * strides - begins, span, begins, pad_value,
                                  out_spatial, strides, reach)
        d = len(kernel)
        if step.node.op_type == "Conv":
            weight, bias = inputs[1], inputs[2] if len(inputs) > 2 else None
            values = CONV[d](patch, weight, bias, list(strides), 0, list(dilations), op.groups)
        elif step.node.op_type == "MaxPool":
            values = max_pool_slices(patch, kernel, strides, dilations, tuple(int(s) for s in size))
            values = lowest_for_padding(values, op.padded(op.pads(x_full)))   # as the op itself gives them
        else:
            values = AVG_POOL[d](patch, list(kernel), list(strides), 0, False, True)
        return crop.moved(values, origin)

    # ---------------------------------------------------------------- gathering and writing
    def _patch(self, name: str, crop: Crop, corner: np.ndarray, span: np.ndarray, begins: np.ndarray,
               pad_value: float, out_spatial: np.ndarray, strides: np.ndarray, reach: np.ndarray):
        """(R, C, *span) input patches at each site's `corner` (U, d) (may start in the padding): x's padded
        activation with the rows' crops written over it; and the crop, its rows perhaps reordered (`_grouped`)."""
        x_full = self.full[name]
        ends = np.maximum(0, (out_spatial - 1) * strides - begins + reach + 1 - np.array(x_full.shape[2:]))
        key = (name, tuple(begins), tuple(ends), pad_value)
        if key not in self._padded:
            pads = [int(v) for pair in zip(begins[::-1], ends[::-1]) for v in pair]
            self._padded[key] = F.pad(x_full, pads, value=pad_value)[0]
        crop = self._grouped(crop, crop.sites - corner)
        patch = gather(self._padded[key], corner + begins, tuple(int(s) for s in span), crop.row_site)
        write(patch, crop.sites - corner, crop)   # a strided op may read no part of a crop's edge
        self._made.append(patch)
        return patch, crop

    def _reframe(self, name: str, crop: Crop, origin: np.ndarray, size: tuple[int, ...]) -> torch.Tensor:
        """The rows' activation `name` on boxes (origin per site, size) that contain their crops."""
        framed = gather(self.full[name][0], origin, size, crop.row_site)
        write(framed, crop.sites - origin, crop)
        self._made.append(framed)
        return framed

    def _grouped(self, crop: Crop, offsets: np.ndarray) -> Crop:
        """The crop with its rows sorted by the offset they are written at (`offsets` per site), so that the write
        moves slices instead of indexed rows; where the rows may be reordered (the crop is the only per-row value
        alive: `_sole_row_value`). The runner keeps the order and restores it on the outputs."""
        distinct, site_group = sites_of(offsets)
        if not self._sortable or len(distinct) == 1 or len(distinct) > MAX_GROUPS:
            return crop
        row_group = site_group[crop.row_site]
        if (np.diff(row_group) >= 0).all():
            return crop
        order = np.argsort(row_group, kind="stable")
        self._order = order if self._order is None else self._order[order]
        values = crop.values.index_select(0, torch.as_tensor(order, device=crop.values.device))
        return replace(crop, values=values, row_site=crop.row_site[order])

    def _whole(self, name: str, crop: Crop, rows: int) -> torch.Tensor:
        """Full rows: x's activation `name` with each row's crop written in."""
        crop = self._grouped(crop, crop.sites)
        whole = self.full[name].expand(rows, *self.full[name].shape[1:]).clone()
        write(whole.view(rows, *crop.map_shape) if isinstance(crop, FlatCrop) else whole, crop.sites, crop)
        self._made.append(whole)
        return whole


def _sole_row_value(env: dict, step, dropped, rows: int) -> bool:
    """Whether the step's one cropped input is the only per-row value alive and is released after the step: its
    rows may then be reordered without reordering anything else."""
    names = [name for name in step.inputs if isinstance(env.get(name), Crop)]
    if len(names) != 1 or names[0] not in dropped:      # one input slot: the crop is reordered once
        return False
    return all(name == names[0] or (isinstance(value, torch.Tensor) and value.numel() < rows)
               for name, value in env.items())


def _shares_memory(values: torch.Tensor, entry: torch.Tensor | None) -> bool:
    """Whether `values` lie in the caller's window values (the entry crop, or a Pad's view of it)."""
    return entry is not None and values.untyped_storage().data_ptr() == entry.untyped_storage().data_ptr()


def _spatially_constant(value: torch.Tensor, crop: Crop) -> bool:
    """A constant operand that broadcasts over the crop the same way at every position (per channel, or one)."""
    d = len(crop.size)
    if value.ndim <= 1:
        return value.numel() == 1      # a vector broadcasts along the last axis: over space
    batch_free = value.ndim <= d + 1 or (value.ndim == d + 2 and value.shape[0] == 1)
    return batch_free and all(s == 1 for s in value.shape[-d:])


def _axis(step, first) -> int:
    axis = int(step.op.attr("axis", 1))
    rank = len(first.values.shape) if isinstance(first, Crop) else first.ndim
    return axis + rank if axis < 0 else axis


def _window_geometry(op, x_full: torch.Tensor, inputs: list):
    """(kernel, strides, dilations, begin pads, pad value) of a Conv / MaxPool / AveragePool whose crop can be
    computed on a patch with no padding of its own; None for the cases that cannot (pooling indices, averages
    that leave padding out of their counts, ceil-mode averages)."""
    op_type = op.node.op_type
    if op_type == "Conv":
        if op.kind != "linear":
            return None
        weight = inputs[1]
        kernel, pairs, pad_value = list(weight.shape[2:]), op.pads(x_full, weight), 0.0
    else:
        kernel, pairs = op.kernel, op.pads(x_full)
        if op_type == "MaxPool":
            if len(op.node.output) > 1 and op.node.output[1]:
                return None
            pad_value = float("-inf")
        else:
            padded = any(b or e for b, e in pairs)
            if op.ceil or set(op.dilations) != {1} or (padded and not op.attr("count_include_pad", 0)):
                return None
            pad_value = 0.0
    d = len(kernel)
    return (np.array(kernel), np.array(op.strides[:d]), np.array(op.dilations[:d]), np.array([b for b, _ in pairs]),
            pad_value)
