"""Random conv graphs for the fuzz tests: `Builder` draws layers from a seeded generator and tracks each tensor's
(C, *spatial) shape, so that every draw fits the map it gets. Attributes and inputs take the forms of the graph's
opset (Clip's bounds and Pad's pads are attributes before opset 11; MaxPool's dilations and the pools' ceil mode
exist from opset 10; Gemm needs its C before opset 11); at opset 13 the draws are the ones the incremental fuzz
has always made.
"""
from __future__ import annotations

import numpy as np
from onnx import helper, numpy_helper

POINTWISE = ("Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "BatchNormalization")


class Builder:
    """Nodes and initializers of a graph under construction, with each tensor's (C, *spatial) shape."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, ...], opset: int = 13):
        self.rng, self.nodes, self.weights, self.shapes = rng, [], [], {"x": tuple(shape)}
        self.opset = opset

    def constant(self, array: np.ndarray) -> str:
        name = f"k{len(self.weights)}"
        self.weights.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def add(self, op: str, inputs: list[str], shape, output: str | None = None, **attributes) -> str:
        output = output or f"t{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [output], **attributes))
        self.shapes[output] = tuple(int(v) for v in shape)
        return output

    # ------------------------------------------------------------ layers
    def conv(self, t: str, channels: int | None = None, same: bool = False, strides=None,
             groups: int | None = None) -> str:
        """A convolution; `same`: automatic pads, or symmetric ones at stride 1 (outputs ceil(n / stride));
        `groups` (else drawn) must divide the input and output channels."""
        rng, (c, *n) = self.rng, self.shapes[t]
        d, n = len(n), np.array(n)
        for _ in range(20):
            kernel, dilations = rng.integers(1, 6, d), rng.integers(1, 3, d)
            step = np.array(strides) if strides is not None else rng.choice([1, 1, 1, 2, 3], d)
            span = (kernel - 1) * dilations + 1
            attributes = {}
            mode = rng.choice(["SAME_UPPER", "SAME_LOWER", "pads"] if same else
                              ["pads", "pads", "pads", "SAME_UPPER", "SAME_LOWER", "VALID"])
            if mode == "pads" and same:
                if (step != 1).any() or (span % 2 == 0).any():
                    continue
                pads = np.concatenate([(span - 1) // 2, (span - 1) // 2])
            elif mode == "pads":
                pads = rng.integers(0, np.tile(kernel + 1, 2))
            else:
                attributes["auto_pad"], pads = str(mode), None
                dilations = dilations if mode == "VALID" else np.ones(d, int)   # onnxruntime refuses SAME's
                span = (kernel - 1) * dilations + 1
            if mode == "VALID":
                out = (n - span) // step + 1
            elif mode != "pads":
                out = -(-n // step)
            else:
                attributes["pads"] = [int(p) for p in pads]
                out = (n + pads[:d] + pads[d:] - span) // step + 1
            if (out >= 1).all():
                break
        else:
            return t
        cout = channels or int(rng.integers(1, 6))
        if groups is None:
            divisors = [g for g in range(1, c + 1) if c % g == 0 and cout % g == 0]
            groups = int(rng.choice(divisors)) if rng.random() < 0.4 else 1
        weight = self.constant(rng.normal(0, 1 / np.sqrt(c // groups * np.prod(kernel)),
                                          (cout, c // groups, *kernel)).astype(np.float32))
        inputs = [t, weight] + ([self.constant(rng.normal(0, 0.2, cout).astype(np.float32))]
                                if rng.random() < 0.7 else [])
        if groups > 1:
            attributes["group"] = groups
        return self.add("Conv", inputs, (cout, *out), kernel_shape=[int(k) for k in kernel],
                        strides=[int(s) for s in step], dilations=[int(v) for v in dilations], **attributes)

    def pool(self, t: str, op: str, same: bool = False) -> str:
        """MaxPool (dilations, and 1-D kernels up to 20) or AveragePool (padding counted or not); `same`: stride 1,
        automatic pads."""
        rng, (c, *n) = self.rng, self.shapes[t]
        d, n = len(n), np.array(n)
        for _ in range(20):
            large = op == "MaxPool" and d == 1 and rng.random() < 0.3
            kernel = rng.integers(14, 21, d) if large else rng.integers(1, 6, d)
            dilations = rng.integers(1, 3, d) if op == "MaxPool" else np.ones(d, int)
            dilations = dilations if self.opset >= 10 else np.ones(d, int)    # MaxPool-8 has no dilations
            step = np.ones(d, int) if same else rng.choice([1, 1, 2, 3], d)
            span = (kernel - 1) * dilations + 1
            attributes = {}
            mode = rng.choice(["SAME_UPPER", "SAME_LOWER"] if same else ["pads", "pads", "SAME_UPPER", "VALID"])
            if mode == "pads":
                pads = rng.integers(0, np.tile(kernel, 2))       # onnxruntime: pads smaller than the kernel
                attributes["pads"] = [int(p) for p in pads]
                total = n + pads[:d] + pads[d:] - span
                ceil = rng.random() < 0.35 and self.opset >= 10             # nor ceil_mode
                out = (-(-total // step) if ceil else total // step) + 1
                if ceil:
                    out -= (out - 1) * step >= n + pads[:d]     # the last window starts inside
                    attributes["ceil_mode"] = 1
            elif mode == "VALID":
                attributes["auto_pad"], out = "VALID", (n - span) // step + 1
            else:   # onnxruntime pads pools for SAME as if undilated (outputs not ceil(n / stride)): undilated
                attributes["auto_pad"], out, dilations = str(mode), -(-n // step), np.ones(d, int)
            if (out >= 1).all():
                break
        else:
            return t
        if op == "MaxPool":
            attributes.update({"dilations": [int(v) for v in dilations]} if self.opset >= 10 else {})
        elif rng.random() < 0.5:
            attributes["count_include_pad"] = 1
        return self.add(op, [t], (c, *out), kernel_shape=[int(k) for k in kernel], strides=[int(s) for s in step],
                        **attributes)

    def pointwise(self, t: str, op: str | None = None) -> str:
        rng, shape = self.rng, self.shapes[t]
        op = op or str(rng.choice(POINTWISE))
        if op == "LeakyRelu":
            return self.add(op, [t], shape, alpha=float(rng.uniform(0.01, 0.3)))
        if op == "Clip":
            low = float(rng.uniform(-1, 0)) if rng.random() < 0.7 else None
            high = float(rng.uniform(0.2, 1.5)) if rng.random() < 0.7 else None
            return self.clip(t, low, high)
        if op == "BatchNormalization":
            c = shape[0]
            vectors = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.3, c), rng.normal(0, 0.3, c), rng.uniform(0.5, 2, c)]
            return self.add(op, [t] + [self.constant(v.astype(np.float32)) for v in vectors], shape,
                            epsilon=float(rng.uniform(1e-5, 1e-2)))
        return self.add(op, [t], shape)

    def clip(self, t: str, low: float | None, high: float | None) -> str:
        """Clip to [low, high] (None: unbounded): attributes before opset 11, inputs from it."""
        if self.opset < 11:
            bounds = {name: value for name, value in (("min", low), ("max", high)) if value is not None}
            return self.add("Clip", [t], self.shapes[t], **bounds)
        inputs = [t, "" if low is None else self.constant(np.array(low, np.float32))]
        inputs += [] if high is None else [self.constant(np.array(high, np.float32))]
        return self.add("Clip", inputs, self.shapes[t])

    def pad(self, t: str) -> str:
        """A constant Pad (any fill) or a reflect Pad of the spatial axes."""
        rng, (_, *n) = self.rng, self.shapes[t]
        d, n = len(n), np.array(n)
        reflect = rng.random() < 0.3 and (n >= 2).all()
        pads = np.minimum(rng.integers(0, 4, 2 * d), np.tile(n - 1, 2)) if reflect else rng.integers(0, 4, 2 * d)
        full = [0, 0, *pads[:d], 0, 0, *pads[d:]]
        value = float(rng.normal(0, 1)) if not reflect and rng.random() < 0.6 else None
        return self.padded(t, full, "reflect" if reflect else "constant", value)

    def padded(self, t: str, full, mode: str, value: float | None = None) -> str:
        """Pad by `full` ([begins..., ends...] over every axis): attributes before opset 11, inputs from it."""
        c, *n = self.shapes[t]
        d = len(n)
        shape = np.array([c, *n]) + np.array(full[1:d + 2]) + np.array(full[d + 3:])
        if self.opset < 11:
            extra = {} if value is None else {"value": value}
            return self.add("Pad", [t], shape, mode=mode, pads=[int(p) for p in full], **extra)
        inputs = [t, self.constant(np.array(full, np.int64))]
        inputs += [] if value is None else [self.constant(np.array(value, np.float32))]
        return self.add("Pad", inputs, shape, mode=mode)

    def branch(self, t: str, length: int, channels: int, strides) -> str:
        """`length` steps that keep the map's shape but for `strides` (the first step's), ending on `channels`."""
        for i in range(length):
            if i == 0 or self.shapes[t][0] != channels or self.rng.random() < 0.5:
                t = self.conv(t, channels, same=True, strides=strides if i == 0 else np.ones_like(strides))
            elif self.rng.random() < 0.5:
                t = self.pool(t, str(self.rng.choice(["MaxPool", "AveragePool"])), same=True)
            else:
                t = self.pointwise(t)
        return t

    def fork(self, t: str) -> str:
        """Two branches of t joined by Add, Mul, Max (same channels) or Concat; a branch may be t itself, and a
        long one keeps the other alive across its steps."""
        rng, (c, *n) = self.rng, self.shapes[t]
        join = str(rng.choice(["Add", "Concat", "Mul", "Max"]))
        strides = np.ones(len(n), int) if rng.random() < 0.7 else rng.choice([1, 2], len(n))
        channels = int(rng.integers(1, 6))
        lengths = rng.integers(0, 5, 2)                     # both 0: the op of t with itself
        if (strides != 1).any() or (join != "Concat" and channels != c):
            lengths = np.maximum(lengths, 1)
        a = self.branch(t, int(lengths[0]), channels, strides)
        b = self.branch(t, int(lengths[1]), channels if join != "Concat" else int(rng.integers(1, 6)), strides)
        if self.shapes[a][1:] != self.shapes[b][1:] or (join != "Concat" and self.shapes[a] != self.shapes[b]):
            return a                                       # a conv that could not be drawn: no join
        channels = self.shapes[a][0] + (self.shapes[b][0] if join == "Concat" else 0)
        operands = [a, b] if rng.random() < 0.5 else [b, a]
        extra = {"axis": 1} if join == "Concat" else {}
        return self.add(join, operands, (channels, *self.shapes[a][1:]), **extra)

    def gate(self, t: str) -> str:
        """Squeeze-and-excitation: the map times a sigmoid of its global average (perhaps through a 1x1 conv)."""
        c, *n = self.shapes[t]
        pooled = self.add("GlobalAveragePool", [t], (c, *[1] * len(n)))
        if self.rng.random() < 0.5:
            weight = self.constant(self.rng.normal(0, 0.5, (c, c) + (1,) * len(n)).astype(np.float32))
            pooled = self.add("Conv", [pooled, weight], self.shapes[pooled], kernel_shape=[1] * len(n))
        return self.add("Mul", [t, self.add("Sigmoid", [pooled], self.shapes[pooled])], self.shapes[t])

    def dense(self, t: str, width: int, classes: int, output: str | None = None) -> tuple[str, int]:
        """Gemm (transB, alpha, beta, bias of any broadcastable shape or none) or MatMul of (R, width) rows."""
        rng = self.rng
        weight = rng.normal(0, 1 / np.sqrt(width), (width, classes)).astype(np.float32)
        if rng.random() < 0.3:
            return self.add("MatMul", [t, self.constant(weight)], (classes,), output), classes
        trans_b = int(rng.integers(0, 2))
        inputs = [t, self.constant(weight.T.copy() if trans_b else weight)]
        bias = rng.choice(["none", "vector", "row", "scalar"])
        if bias != "none":
            shape = {"vector": (classes,), "row": (1, classes), "scalar": ()}[bias]
            inputs.append(self.constant(rng.normal(0, 0.5, shape).astype(np.float32)))
        elif self.opset < 11:                                       # Gemm-7 to 10 need their C
            inputs.append(self.constant(np.zeros((), np.float32)))
        return self.add("Gemm", inputs, (classes,), output, transA=0, transB=trans_b,
                        alpha=float(rng.choice([1.0, rng.uniform(0.3, 2)])),
                        beta=float(rng.choice([1.0, rng.uniform(0.3, 2)]))), classes

    def head(self, t: str) -> None:
        """'logits': rows of the map (Flatten or Reshape [0, -1]; or global pooling first), perhaps a scalar
        pointwise op, then one or two dense layers; or the rows themselves."""
        rng, shape = self.rng, self.shapes[t]
        kind = rng.choice(["Flatten", "Flatten", "Reshape", "Reshape", "GlobalAveragePool", "rows"])
        if kind == "GlobalAveragePool":
            t = self.add(kind, [t], (shape[0],) + (1,) * (len(shape) - 1))
        if kind == "Reshape":
            rows = self.add("Reshape", [t, self.constant(np.array([0, -1], np.int64))], (int(np.prod(shape)),))
        else:
            rows = self.add("Flatten", [t], (int(np.prod(self.shapes[t])),), "logits" if kind == "rows" else None)
        if kind == "rows":
            return
        width = self.shapes[rows][0]
        if rng.random() < 0.4:
            rows = self.pointwise(rows, str(rng.choice(["Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip"])))
        if rng.random() < 0.3:
            rows, width = self.dense(rows, width, int(rng.integers(3, 9)))
            rows = self.pointwise(rows, str(rng.choice(["Relu", "Tanh"])))
        self.dense(rows, width, int(rng.integers(2, 7)), "logits")
