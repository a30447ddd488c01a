"""Random graphs at random opsets for the executor fuzz: `OpsetBuilder` adds to `Builder` the rest of the ops a
classifier holds, each in the attribute and input forms of the graph's opset (7 to 22), and `draw_model` draws a
graph from a seed.

A draw is a small graph on a 1-D, 2-D or 3-D input of odd sizes: convolutions (kernels, strides, dilations, groups,
depthwise, asymmetric or automatic pads), transposed convolutions (strides, output padding, pads, automatic pads,
output shapes), max and average poolings (ceil mode, padding counted or not), BatchNormalization after a convolution
(merged by the LRP canonizer) or alone (spatial, training_mode and momentum attributes; statistics per value at
opsets 7-8), LRN, activations (Relu, LeakyRelu, PRelu, Clip, Elu, Sigmoid, Tanh, HardSigmoid, HardSwish or written
out as x * clip(x + 3, 0, 6) / 6), Dropout, squeeze-and-excitation gates, residual Add, Sub, Sum, Concat, Max and
Mul joins, scalings and shifts by constants, Pad, Upsample (opsets 7-9) or Resize (by scales, or by sizes built from
Shape), Unsqueeze/Squeeze, Transpose, Slice, Split, Reshape (channel shuffles, folded axes), a head (Flatten,
Reshape, GlobalAveragePool or ReduceMean; Gemm with transA, transB, alpha and beta, or MatMul and Add), and perhaps
a Softmax. Float32 weights. Draws steer clear of what onnxruntime or ONNX's shape inference handle otherwise than
the specification (noted where they do).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from fuzz_graphs import Builder


class OpsetBuilder(Builder):
    """`Builder` with the rest of the ops a classifier holds, each in its opset's form."""

    def axes_node(self, op: str, t: str, axes: list[int], shape, attribute_before: int, **attributes) -> str:
        """Squeeze/Unsqueeze/ReduceMean: `axes` an attribute before opset `attribute_before`, an input from it."""
        if self.opset < attribute_before:
            return self.add(op, [t], shape, axes=axes, **attributes)
        return self.add(op, [t, self.constant(np.array(axes, np.int64))], shape, **attributes)

    def pool(self, t: str, op: str, same: bool = False) -> str:
        """`Builder.pool`, but not with automatic pads below zero (a kernel shorter than the stride): onnxruntime's
        MaxPool refuses them and its AveragePool crops by them, where the registry, like TensorFlow, pads by zero."""
        out = super().pool(t, op, same)
        node = self.nodes[-1]
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if out != t and attributes.get("auto_pad", b"VALID") != b"VALID":
            n, kernel, strides = np.array(self.shapes[t][1:]), attributes["kernel_shape"], attributes["strides"]
            if ((-(-n // strides) - 1) * strides + kernel < n).any():
                self.nodes.pop()
                del self.shapes[out]
                return t
        return out

    def activation(self, t: str) -> str:
        rng, (c, *n) = self.rng, self.shapes[t]
        op = str(rng.choice(["Relu", "LeakyRelu", "PRelu", "Clip", "Elu", "Sigmoid", "Tanh", "HardSigmoid",
                             "HardSwish", "LRN", "Dropout", "BatchNormalization"]))
        if op in ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip"):
            return self.pointwise(t, op)
        if op == "PRelu":
            slope = rng.uniform(-0.5, 0.5, (c,) + (1,) * len(n) if rng.random() < 0.7 else (1,))
            return self.add(op, [t, self.constant(slope.astype(np.float32))], self.shapes[t])
        if op == "Elu":
            return self.add(op, [t], self.shapes[t], alpha=float(rng.uniform(0.2, 2)))
        if op == "HardSigmoid":
            return self.add(op, [t], self.shapes[t], alpha=float(rng.uniform(0.1, 0.5)),
                            beta=float(rng.uniform(0.3, 0.7)))
        if op == "HardSwish":
            return self.add(op, [t], self.shapes[t]) if self.opset >= 14 and rng.random() < 0.5 else \
                self.hard_swish(t)
        if op == "LRN" and len(n) == 2:   # onnxruntime's LRN takes 4-D tensors only (else: BatchNormalization)
            return self.add(op, [t], self.shapes[t], size=int(rng.choice([1, 3, 5])),
                            alpha=float(rng.uniform(1e-4, 0.5)), beta=float(rng.uniform(0.5, 1)),
                            bias=float(rng.uniform(0.5, 2)))
        if op == "Dropout":
            return self.dropout(t)
        return self.batch_norm(t)

    def hard_swish(self, t: str) -> str:
        """x * clip(x + 3, 0, 6) / 6, or x * HardSigmoid(x) with slope 1/6, operands in either order."""
        rng, shape = self.rng, self.shapes[t]
        if rng.random() < 0.3:
            gate = self.add("HardSigmoid", [t], shape, alpha=1 / 6, beta=0.5)
        else:
            gate = self.clip(self.add("Add", [t, self.constant(np.array(3, np.float32))], shape), 0.0, 6.0)
            if rng.random() < 0.5:
                gate = self.add("Div", [gate, self.constant(np.array(6, np.float32))], shape)
            else:
                product = self.add("Mul", [t, gate] if rng.random() < 0.5 else [gate, t], shape)
                return self.add("Div", [product, self.constant(np.array(6, np.float32))], shape)
        return self.add("Mul", [t, gate] if rng.random() < 0.5 else [gate, t], shape)

    def dropout(self, t: str) -> str:
        """Inference Dropout: ratio an attribute before opset 12, inputs (ratio, training_mode) from it; perhaps
        with its mask output."""
        rng, shape = self.rng, self.shapes[t]
        outputs = [f"t{len(self.nodes)}"] + ([f"mask{len(self.nodes)}"] if rng.random() < 0.3 else [])
        inputs, attributes = [t], {}
        if self.opset < 12:
            attributes = {"ratio": float(rng.uniform(0.1, 0.5))} if rng.random() < 0.5 else {}
        elif rng.random() < 0.5:
            inputs.append(self.constant(np.array(rng.uniform(0.1, 0.5), np.float32)))
            if rng.random() < 0.5:
                inputs.append(self.constant(np.array(False)))
        self.nodes.append(helper.make_node("Dropout", inputs, outputs, **attributes))
        self.shapes[outputs[0]] = shape
        return outputs[0]

    def batch_norm(self, t: str) -> str:
        """BatchNormalization with its opset's attributes (spatial before 9, training_mode from 14)."""
        rng, (c, *n) = self.rng, self.shapes[t]
        per_value = self.opset < 9 and rng.random() < 0.2           # spatial=0: statistics per (C, *spatial) value
        size = (c, *n) if per_value else (c,)
        vectors = [rng.uniform(0.5, 1.5, size), rng.normal(0, 0.3, size), rng.normal(0, 0.3, size),
                   rng.uniform(0.5, 2, size)]
        attributes = {"epsilon": float(rng.uniform(1e-5, 1e-2))}
        if self.opset < 9 and (per_value or rng.random() < 0.5):
            attributes["spatial"] = 0 if per_value else 1
        if self.opset >= 14 and rng.random() < 0.5:
            attributes["training_mode"] = 0
        if rng.random() < 0.3:
            attributes["momentum"] = 0.9
        return self.add("BatchNormalization", [t] + [self.constant(v.astype(np.float32)) for v in vectors],
                        self.shapes[t], **attributes)

    def conv_bn(self, t: str) -> str:
        return self.batch_norm(self.conv(t))

    def conv_transpose(self, t: str) -> str:
        """A transposed convolution: strides, dilations, output padding, explicit or automatic pads, or an
        output shape; groups."""
        rng, (c, *n) = self.rng, self.shapes[t]
        d, n = len(n), np.array(n)
        for _ in range(20):
            kernel, strides, dilations = rng.integers(1, 5, d), rng.choice([1, 1, 2, 3], d), rng.choice([1, 1, 2], d)
            extra = rng.integers(0, strides)           # onnxruntime: less than the stride (ONNX: or the dilation)
            mode = str(rng.choice(["pads", "pads", "SAME_UPPER", "SAME_LOWER", "output_shape"]))
            # output padding only with explicit pads: with automatic ones onnxruntime gives n * stride, as ONNX says,
            # but ONNX's shape inference adds the output padding; with an output shape onnxruntime refuses some
            extra = extra if mode == "pads" else np.zeros(d, int)
            full = strides * (n - 1) + extra + (kernel - 1) * dilations + 1
            attributes = {}
            if mode == "pads":
                pads = rng.integers(0, np.tile(kernel, 2))
                attributes["pads"], out = [int(p) for p in pads], full - pads[:d] - pads[d:]
            elif mode == "output_shape":       # ONNX infers no spatial axes where one is below the input's
                out = np.maximum(full - rng.integers(0, 3, d), n)
                attributes["output_shape"] = [int(v) for v in out]
            else:
                attributes["auto_pad"], out = mode, n * strides
            if (out >= 1).all() and (full >= out).all() and out.prod() <= 20_000:
                break
        else:
            return t
        cout = int(rng.integers(1, 6))
        groups = int(rng.choice([g for g in range(1, c + 1) if c % g == 0 and cout % g == 0]))
        weight = rng.normal(0, 1 / np.sqrt(c * np.prod(kernel) / np.prod(strides)), (c, cout // groups, *kernel))
        inputs = [t, self.constant(weight.astype(np.float32))]
        inputs += [self.constant(rng.normal(0, 0.2, cout).astype(np.float32))] if rng.random() < 0.6 else []
        if any(extra):
            attributes["output_padding"] = [int(v) for v in extra]
        return self.add("ConvTranspose", inputs, (cout, *out), kernel_shape=[int(k) for k in kernel],
                        strides=[int(s) for s in strides], dilations=[int(v) for v in dilations], group=groups,
                        **attributes)

    def depthwise(self, t: str) -> str:
        """A depthwise convolution (groups = channels), perhaps with a channel multiplier."""
        c = self.shapes[t][0]
        return self.conv(t, c * int(self.rng.choice([1, 1, 2])), groups=c)

    def se_gate(self, t: str) -> str:
        """Squeeze-and-excitation: x * sigmoid (or hard sigmoid) of conv(relu(conv(mean of x)))."""
        rng, (c, *n) = self.rng, self.shapes[t]
        ones = (1,) * len(n)
        if rng.random() < 0.5:
            pooled = self.add("GlobalAveragePool", [t], (c, *ones))
        else:
            pooled = self.axes_node("ReduceMean", t, list(range(2, 2 + len(n))), (c, *ones), 18, keepdims=1)
        hidden = int(rng.integers(1, c + 2))
        for i, width in enumerate((hidden, c)):
            weight = self.constant(rng.normal(0, 1, (width, self.shapes[pooled][0], *ones)).astype(np.float32))
            bias = self.constant(rng.normal(0, 0.2, width).astype(np.float32))
            pooled = self.add("Conv", [pooled, weight, bias], (width, *ones), kernel_shape=list(ones))
            pooled = self.add("Relu", [pooled], self.shapes[pooled]) if i == 0 else pooled
        gate = self.add(str(rng.choice(["Sigmoid", "HardSigmoid"])), [pooled], self.shapes[pooled])
        return self.add("Mul", [t, gate] if rng.random() < 0.5 else [gate, t], self.shapes[t])

    def join(self, t: str) -> str:
        """A residual Add, Sub, Sum of three, Concat, Max or (no LRP rule for two activations) Mul."""
        rng, (c, *n) = self.rng, self.shapes[t]
        op = str(rng.choice(["Add", "Add", "Sub", "Sum", "Concat", "Max", "Mul"]))
        ones = np.ones(len(n), int)
        a = self.branch(t, int(rng.integers(1, 4)), c if op != "Concat" else int(rng.integers(1, 6)), ones)
        operands = [t, a] + ([self.branch(t, int(rng.integers(1, 3)), c, ones)] if op == "Sum" else [])
        if any(self.shapes[o][1:] != self.shapes[t][1:] for o in operands) or \
                (op != "Concat" and any(self.shapes[o] != self.shapes[t] for o in operands)):
            return a
        operands = [operands[i] for i in rng.permutation(len(operands))]
        channels = sum(self.shapes[o][0] for o in operands) if op == "Concat" else c
        return self.add(op, operands, (channels, *n), **({"axis": 1} if op == "Concat" else {}))

    def scale(self, t: str) -> str:
        """Mul, Div, Add or Sub by a constant: one value, one per channel or one per element."""
        rng, (c, *n) = self.rng, self.shapes[t]
        op = str(rng.choice(["Mul", "Div", "Add", "Sub"]))
        shape = [(), (1,), (c,) + (1,) * len(n), (1, c) + (1,) * len(n), (c, *n)][int(rng.integers(0, 5))]
        value = rng.uniform(0.5, 2, shape) * rng.choice([-1, 1], shape) if op in ("Mul", "Div") else \
            rng.normal(0, 0.5, shape)
        constant = self.constant(np.asarray(value, np.float32))
        operands = [t, constant] if op in ("Div", "Sub") or rng.random() < 0.5 else [constant, t]
        return self.add(op, operands, self.shapes[t])

    def pad_any(self, t: str) -> str:
        """Pad (constant, reflect or edge) of the spatial axes; from opset 11 some pads may crop."""
        rng, (_, *n) = self.rng, self.shapes[t]
        d, n = len(n), np.array(n)
        mode = str(rng.choice(["constant", "constant", "reflect", "edge"]))
        crop = self.opset >= 11 and mode == "constant" and rng.random() < 0.3
        pads = rng.integers(np.tile(-((n - 1) // 2) if crop else np.zeros(d, int), 2), 4)
        if mode == "reflect":
            pads = np.minimum(pads, np.tile(n - 1, 2))
        value = float(rng.normal(0, 1)) if mode == "constant" and rng.random() < 0.5 else None
        return self.padded(t, [0, 0, *pads[:d], 0, 0, *pads[d:]], mode, value)

    def resize(self, t: str) -> str:
        """Upsample (opsets 7-9, nearest) or Resize: nearest in any coordinate and rounding mode, or linear with
        half-pixel or aligned corners (from opset 11), by scales or sizes."""
        rng, (c, *n) = self.rng, self.shapes[t]
        scales = rng.choice([1.0, 1.5, 2.0, 3.0] + ([0.5] if self.opset >= 10 else []), len(n))   # Upsample: >= 1
        out = np.floor(np.array(n) * scales).astype(int)
        if (out < 1).any() or out.prod() > 20_000:
            return t
        full = np.array([1.0, 1.0, *scales], np.float32)
        if self.opset < 9:
            return self.add("Upsample", [t], (c, *out), mode="nearest", scales=[float(s) for s in full])
        if self.opset == 9:
            return self.add("Upsample", [t, self.constant(full)], (c, *out), mode="nearest")
        if self.opset == 10:
            return self.add("Resize", [t, self.constant(full)], (c, *out), mode="nearest")
        attributes = {"mode": "nearest", "coordinate_transformation_mode": str(rng.choice(
            ["asymmetric", "half_pixel", "align_corners", "pytorch_half_pixel", "tf_half_pixel_for_nn"])),
            "nearest_mode": str(rng.choice(["floor", "ceil", "round_prefer_floor", "round_prefer_ceil"]))}
        if rng.random() < 0.4:
            attributes = {"mode": "linear",
                          "coordinate_transformation_mode": str(rng.choice(["half_pixel", "align_corners"]))}
        empty = self.constant(np.zeros(0, np.float32)) if self.opset < 13 else ""
        if rng.random() < 0.5:
            return self.add("Resize", [t, empty, self.constant(full)], (c, *out), **attributes)
        out = np.maximum(1, out + rng.integers(-1, 2, len(n)))
        return self.add("Resize", [t, empty, empty, self.sizes(t, out)], (c, *out), **attributes)

    def sizes(self, t: str, spatial) -> str:
        """[N, C, *spatial], the batch and channels read off `t` at run time (as exporters write Resize's sizes)."""
        name = f"s{len(self.nodes)}"
        if self.opset >= 15:
            self.nodes.append(helper.make_node("Shape", [t], [name], start=0, end=2))
        else:
            self.nodes.append(helper.make_node("Shape", [t], [name + "_all"]))
            ends = [self.constant(np.array([v], np.int64)) for v in (0, 2)]
            self.nodes.append(helper.make_node("Slice", [name + "_all", *ends], [name]))
        fixed = self.constant(np.array(spatial, np.int64))
        self.nodes.append(helper.make_node("Concat", [name, fixed], [name + "_sizes"], axis=0))
        return name + "_sizes"

    def unsqueeze(self, t: str) -> str:
        """Unsqueeze a spatial position, an activation there, and Squeeze it again (negative axes from 11)."""
        rng, shape = self.rng, self.shapes[t]
        rank = len(shape) + 2
        axis = int(rng.integers(2, rank))
        named = axis - rank if self.opset >= 11 and rng.random() < 0.5 else axis
        wide = self.axes_node("Unsqueeze", t, [named], shape[:axis - 1] + (1,) + shape[axis - 1:], 13)
        wide = self.add("Relu", [wide], self.shapes[wide])
        return self.axes_node("Squeeze", wide, [named], shape, 13)

    def transpose(self, t: str) -> str:
        c, *n = self.shapes[t]
        order = [int(i) for i in self.rng.permutation(len(n))]
        return self.add("Transpose", [t], (c, *[n[i] for i in order]), perm=[0, 1] + [2 + i for i in order])

    def slice(self, t: str) -> str:
        """Slice of some spatial axes: attributes before opset 10, inputs (and steps, negative ones too) from it."""
        rng, (c, *n) = self.rng, self.shapes[t]
        axes = sorted(int(a) for a in rng.choice(len(n), int(rng.integers(1, len(n) + 1)), replace=False))
        starts, ends, steps, shape = [], [], [], [c, *n]
        for axis in axes:
            size = n[axis]
            step = int(rng.choice([1, 1, 2, -1])) if self.opset >= 10 else 1
            start = int(rng.integers(-size, size))
            end = int(rng.choice([rng.integers(-size, size + 1), 1000 * step]))   # +-1000: to the far end
            shape[axis + 1] = len(range(size)[start:end:step])
            starts, ends, steps = starts + [start], ends + [end], steps + [step]
        if min(shape) < 1:
            return t
        all_axes = [a + 2 for a in axes]
        if self.opset < 10:
            return self.add("Slice", [t], shape, starts=starts, ends=ends, axes=all_axes)
        inputs = [t] + [self.constant(np.array(v, np.int64)) for v in (starts, ends, all_axes)]
        return self.add("Slice", inputs + ([self.constant(np.array(steps, np.int64))] if set(steps) != {1} else []),
                        shape)

    def split(self, t: str) -> str:
        """Split along channels or a spatial axis (sizes an attribute before 13, an input from it, or num_outputs
        from 18), each part perhaps activated, then Concat again, perhaps in another order."""
        rng, shape = self.rng, self.shapes[t]
        axis = int(rng.integers(1, len(shape) + 1))
        size = shape[axis - 1]
        if size < 2:
            return t
        count = int(rng.integers(2, min(size, 3) + 1))
        equal = rng.random() < 0.4 and (size % count == 0 or self.opset >= 18)
        chunk = -(-size // count)
        sizes = [min(chunk, size - i * chunk) for i in range(count)] if equal else \
            list(np.diff([0, *sorted(rng.choice(np.arange(1, size), count - 1, replace=False)), size]))
        parts = [f"t{len(self.nodes)}_{i}" for i in range(count)]
        inputs, attributes = [t], {"axis": axis}
        if equal and self.opset >= 18:
            attributes["num_outputs"] = count
        elif not equal and self.opset < 13:
            attributes["split"] = [int(s) for s in sizes]
        elif not equal:
            inputs.append(self.constant(np.array(sizes, np.int64)))
        self.nodes.append(helper.make_node("Split", inputs, parts, **attributes))
        for part, length in zip(parts, sizes):
            self.shapes[part] = shape[:axis - 1] + (int(length),) + shape[axis:]
        parts = [self.pointwise(p) if rng.random() < 0.4 else p for p in parts]
        parts = [parts[i] for i in rng.permutation(count)]
        return self.add("Concat", parts, shape, axis=axis)

    def reshape(self, t: str) -> str:
        """A channel shuffle (Reshape to groups, Transpose, Reshape back) or the last two spatial axes folded."""
        rng, (c, *n) = self.rng, self.shapes[t]
        groups = [g for g in range(2, c) if c % g == 0]
        if groups and (len(n) < 2 or rng.random() < 0.5):
            g = int(rng.choice(groups))
            split = self.add("Reshape", [t, self.constant(np.array([0, g, c // g, *n], np.int64))], (g, c // g, *n))
            moved = self.add("Transpose", [split], (c // g, g, *n), perm=[0, 2, 1, *range(3, len(n) + 3)])
            return self.add("Reshape", [moved, self.constant(np.array([0, c, *n], np.int64))], (c, *n))
        if len(n) < 2:
            return t
        folded = (c, *n[:-2], n[-2] * n[-1])
        return self.add("Reshape", [t, self.constant(np.array([0, *folded[:-1], -1], np.int64))], folded)

    def softmax_inside(self, t: str) -> str:
        """A Softmax over the channels inside the network: LRP has no rule for it."""
        return self.add("Softmax", [t], self.shapes[t], axis=1)

    def dense(self, t: str, width: int, classes: int, output: str | None = None) -> tuple[str, int]:
        """`Builder.dense`, or Gemm with transA (of the rows transposed) or MatMul then Add of a bias."""
        rng = self.rng
        kind = rng.choice(["builder", "transA", "matmul-add"], p=[0.7, 0.05, 0.25])
        if kind == "builder":
            return super().dense(t, width, classes, output)
        weight = self.constant(rng.normal(0, 1 / np.sqrt(width), (width, classes)).astype(np.float32))
        bias = self.constant(rng.normal(0, 0.5, (classes,)).astype(np.float32))
        if kind == "matmul-add":
            product = self.add("MatMul", [t, weight], (classes,))
            return self.add("Add", [product, bias] if rng.random() < 0.5 else [bias, product], (classes,), output), \
                classes
        columns = self.add("Transpose", [t], (width,), perm=[1, 0])
        return self.add("Gemm", [columns, weight, bias], (classes,), output, transA=1,
                        alpha=float(rng.choice([1.0, rng.uniform(0.3, 2)]))), classes


STEPS = {"conv": 0.2, "conv_bn": 0.08, "depthwise": 0.05, "conv_transpose": 0.06, "MaxPool": 0.06,
         "AveragePool": 0.05, "activation": 0.14, "se_gate": 0.03, "hard_swish": 0.02, "join": 0.07,
         "scale": 0.04, "pad_any": 0.03, "resize": 0.03, "unsqueeze": 0.02, "transpose": 0.02, "slice": 0.03,
         "split": 0.03, "reshape": 0.03, "softmax_inside": 0.01}


def draw_model(seed: int) -> tuple[onnx.ModelProto, tuple[int, ...], list[str]]:
    """A random graph from `seed`: the model (its opset drawn from 7 to 22), its sample shape (C, *spatial), and the
    float tensors its nodes compute."""
    rng = np.random.default_rng(seed)
    opset = int(rng.integers(7, 23))
    d = int(rng.choice([1, 2, 2, 3]))
    high = {1: 41, 2: 19, 3: 11}[d]
    shape = (int(rng.integers(1, 5)), *(int(v) for v in 2 * rng.integers(1, high // 2 + 1, d) + 1))
    g = OpsetBuilder(rng, shape, opset)
    t = "x"
    for _ in range(int(rng.integers(1, 7))):
        step = str(rng.choice(list(STEPS), p=np.array(list(STEPS.values())) / sum(STEPS.values())))
        t = g.pool(t, step) if step in ("MaxPool", "AveragePool") else getattr(g, step)(t)
    if not any(node.op_type in ("Conv", "ConvTranspose") for node in g.nodes):
        t = g.conv(t)
    g.head(t)
    output, classes = "logits", g.shapes["logits"][0]
    if rng.random() < 0.25:
        output = g.add("Softmax", ["logits"], (classes,), "probabilities", **({"axis": 1} if rng.random() < 0.5
                                                                               else {}))
    graph = helper.make_graph(g.nodes, f"fuzz{seed}", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                     [None, *shape])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, [None, classes])], g.weights)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, ir_version=max(helper.find_min_ir_version_for(opsets), 4))
    return proto, shape, [name for name in g.shapes if name != "x"]
