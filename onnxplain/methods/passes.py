"""Where prediction difference's forward passes run: onnxruntime sessions (default) or the torch executor.

Both can keep one reused batch of copies of the explained input, write the windows' samples into it, run it, and
put x's own values back. The torch executor can also run the samples incrementally (`window_runner`: early layers
on crops around each window, `onnxplain.incremental`). On a GPU its batches live in device memory, so only window
values cross the bus, and forward batches are sized from the memory one probe batch really takes. The torch
executor is checked against onnxruntime when it is built, like everywhere else.
"""
from __future__ import annotations

import numpy as np

from ..errors import OnnxplainError

CPU_BATCH = 256                   # larger batches gained nothing on CPU (digits CNN) and sometimes lost to caches
GPU_BATCH = 1024                  # upper bound of a GPU forward batch (keeps early activations under 2^31 elements)
GPU_MEMORY_SHARE = 0.5            # of the free GPU memory, for one forward batch's activations
CHUNK_BYTES = 64 * 2**20          # inputs of one chunk of windows x samples, held in one reused buffer
INCREMENTAL_ROWS = 16384          # upper bound of an incremental batch (crops are small: many rows fit the budget)
INCREMENTAL_SAFETY = 2            # a row's measured memory, doubled for kernels' workspaces and temporaries


PRECISIONS = ("fp32", "tf32")


def chunk_rows(batch: int, sample_bytes: int) -> int:
    """Rows of a chunk's reused buffer: at least one forward batch; small inputs up to CPU_BATCH rows and large
    ones up to CHUNK_BYTES, so that a chunk holds many windows even when the forward batch is small (flat
    volumes of 10^5 voxels have a memory-budget batch of ~17, one window of S=10 samples)."""
    return max(batch, min(CPU_BATCH, CHUNK_BYTES // max(1, sample_bytes)))


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise OnnxplainError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def forward_passes(model, device: str | None, precision: str = "fp32"):
    """onnxruntime (device None: the model's own providers) or the torch executor on `device`."""
    check_precision(precision)
    if device is None or device == "onnxruntime":
        if precision != "fp32":
            raise OnnxplainError("precision 'tf32' applies to the torch executor on a CUDA device (--device cuda)")
        return SessionPasses(model)
    return TorchPasses(model, device, precision)


class WindowSamples:
    """Forward passes of rows that each differ from one input x in one window: a call `(starts, values)` gives the
    raw `output` for window values (R, C, *size) at starts (R, d). They run incrementally where the torch
    executor's runner is usable (channels-first inputs, or channels-last ones made channels-first right after the
    input; `incremental`), else through one reused buffer of copies of x (`rows` rows) into which the windows are
    written and from which they are restored. `rows` afterwards: how many rows
    one call should get (an incremental runner's own batch, which its small crops make larger unless `grow_batch`
    is False: a batch size the user chose)."""

    def __init__(self, passes, geometry, x_sample: np.ndarray, output: str, size: tuple[int, ...], batch: int,
                 rows: int, incremental: bool = True, grow_batch: bool = True):
        self.passes, self.output, self.size, self.batch = passes, output, tuple(size), batch
        self.x_grid = geometry.to_grid(x_sample[None])[0]
        self.runner, self.rows = None, rows
        if incremental and geometry.layout in ("channels_first", "channels_last"):
            self.runner = passes.window_runner(x_sample, output, self.size, batch, grow_batch, geometry.layout)
        if self.runner is None:
            self.buffer = passes.buffer(x_sample, rows)
            self.view = geometry.grid_view(self.buffer)
        else:
            self.rows = max(rows, self.runner.batch_size)

    @property
    def incremental(self) -> bool:
        """Whether every row so far ran incrementally (a batch the runner could not run goes whole)."""
        return self.runner is not None and self.runner.whole_rows == 0

    def __call__(self, starts: np.ndarray, values: np.ndarray) -> np.ndarray:
        if self.runner is not None:
            return self.runner(values, starts)
        from ..crops import window_index

        passes, channels = self.passes, self.x_grid.shape[0]
        index = window_index(starts, self.size, channels, device=passes.device)
        self.view[index] = passes.array(values)
        rows = len(self.buffer) if passes.fixed_shape else len(values)
        raw = passes.run(self.buffer[:rows], self.output, self.batch)[:len(values)]
        self.view[index] = passes.array(self.x_grid[window_index(starts, self.size, channels, rows=False)])
        return raw


class SessionPasses:
    """Batches in numpy, forward passes through `Model.run` (batched onnxruntime)."""

    name = "onnxruntime"
    overlaps_host = False     # onnxruntime on CPU uses every core: nothing to gain from drawing samples meanwhile
    fixed_shape = False       # run only the rows that changed
    device = None             # index arrays stay NumPy

    def __init__(self, model):
        self.model = model

    def batch_size(self, x_sample: np.ndarray) -> int:
        """The model's memory budget; for feature-vector inputs at least a CHUNK_BYTES buffer of inputs (the budget
        assumes conv-net activations 32x the input; a linear model on 10^5 features has activations far smaller
        than its input, and onnxruntime runs such batches faster per sample). On CPU at most CPU_BATCH, while a
        GPU wants batches as large as memory allows."""
        budget = self.model.batch_size(sample_shape=x_sample.shape)
        if x_sample.ndim == 1:
            budget = max(budget, CHUNK_BYTES // max(1, x_sample.nbytes))
        return budget if "CUDAExecutionProvider" in self.model.providers else min(budget, CPU_BATCH)

    def buffer(self, x_sample: np.ndarray, rows: int) -> np.ndarray:
        return np.repeat(x_sample[None], rows, axis=0)

    def window_runner(self, x_sample: np.ndarray, output: str, window: tuple[int, ...], batch: int,
                      grow_batch: bool = True, layout: str = "channels_first"):
        """No incremental forward passes through onnxruntime sessions."""
        return None

    def array(self, values: np.ndarray) -> np.ndarray:
        """Values or indices as the buffer's kind of array."""
        return values

    def run(self, batch: np.ndarray, output: str, batch_size: int) -> np.ndarray:
        return self.model.run(batch, [output], batch_size=batch_size, check=False)[output]


class TorchPasses:
    """Batches as torch tensors on `device`, forward passes through the model's torch executor, no autograd.

    precision 'tf32' lets an NVIDIA GPU (Ampere or newer) multiply in TensorFloat-32 (10-bit mantissa products,
    fp32 sums) for these forward passes only: several times faster, outputs ~1e-3 (relative) off onnxruntime's
    instead of ~1e-6. The executor itself is checked at fp32 either way."""

    def __init__(self, model, device: str, precision: str = "fp32"):
        import torch

        from ..devices import usable_device

        self.torch, self.model, self.device = torch, model, usable_device(device)
        if precision == "tf32" and self.device.type != "cuda":
            raise OnnxplainError(f"precision 'tf32' applies to CUDA devices, not {device!r}")
        self.executor = model.torch(str(self.device))
        self.tf32 = precision == "tf32"
        self.name = f"torch ({self.device}{', tf32' if self.tf32 else ''})"
        # on a GPU the host is idle while a batch runs, and every batch has the chunk's full size, so that cuDNN
        # picks its fastest kernels once (benchmark mode) and keeps them
        self.overlaps_host = self.fixed_shape = self.device.type == "cuda"
        self._gpu_batches: dict[tuple[int, ...], int] = {}   # sample shape -> measured forward batch
        self._incremental: dict[tuple, int | None] = {}       # (output, window, sample shape) -> batch, or None

    def batch_size(self, x_sample: np.ndarray) -> int:
        """On CPU as onnxruntime's; on a GPU from the memory a probe batch of 8 really takes (measured once per
        sample shape)."""
        if self.device.type != "cuda" or self.model.fixed_batch:
            return SessionPasses(self.model).batch_size(x_sample)
        if x_sample.shape not in self._gpu_batches:
            self._gpu_batches[x_sample.shape] = self._measured_batch(x_sample)
        return self._gpu_batches[x_sample.shape]

    def _measured_batch(self, x_sample: np.ndarray) -> int:
        torch, probe = self.torch, 8
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.run(self.buffer(x_sample, probe), self.model.score_output, probe)
        per_sample = max(1, (torch.cuda.max_memory_allocated(self.device) - before) // probe)
        free, _ = torch.cuda.mem_get_info(self.device)
        return int(max(1, min(GPU_BATCH, GPU_MEMORY_SHARE * free // per_sample)))

    def buffer(self, x_sample: np.ndarray, rows: int):
        return self.array(x_sample)[None].repeat(rows, *([1] * x_sample.ndim))

    def array(self, values: np.ndarray):
        return self.torch.as_tensor(np.ascontiguousarray(values), device=self.device)

    def run(self, batch, output: str, batch_size: int) -> np.ndarray:
        def forward(start: int):
            return self.executor.run(batch[start:start + batch_size], [output])[output]

        return self.batches(forward, len(batch), batch_size, tuned=self.fixed_shape)

    def window_runner(self, x_sample: np.ndarray, output: str, window: tuple[int, ...], batch: int,
                      grow_batch: bool = True, layout: str = "channels_first"):
        """An `IncrementalPasses` for rows of x with windows of `window`; None when the model runs through
        onnx2torch, when channels-last samples have no channels-first tensor to start from
        (`channels_first_entry`), or when the runner fails or differs from the full forward pass on a
        probe batch (like the
        executor is checked against onnxruntime): the samples then run whole, `batch` at a time. The check
        depends on shapes only, so it runs once per output, window and sample shape; so does the probe's measure
        of a row's memory, which sizes the incremental batches (`incremental_rows`) unless `grow_batch` is False
        (a batch the user chose)."""
        self.executor.check_shape(x_sample.shape)
        if self.executor.graph is None:
            return None
        from ..incremental import WindowRunner

        entry = None
        if layout == "channels_last":
            entry = channels_first_entry(self.executor.graph, self.model.input_name, x_sample.shape)
            if entry is None:
                return None
        try:
            runner = WindowRunner(self.executor, self.array(x_sample)[None], [output], entry)
        except Exception:  # x's own activations could not be computed here: this input runs whole (not cached)
            return None
        key = (output, tuple(window), x_sample.shape)
        if key not in self._incremental:
            try:
                usable = runner.error(self.executor, window) <= self.executor.tolerance
            except Exception:  # an op meeting shapes its crop rule does not handle: whole samples are always right
                usable = False
            self._incremental[key] = self.incremental_rows(runner) if usable else None
        if self._incremental[key] is None:
            return None
        rows = self._incremental[key] if grow_batch else batch
        return IncrementalPasses(self, runner, tuple(window), rows, batch)

    def incremental_rows(self, runner) -> int:
        """Rows per incremental batch: what the memory budget holds at the probe's per-row peak (crops, and the
        full maps built where a crop has no rule), doubled for safety; under 2^31 elements per tensor and at most
        INCREMENTAL_ROWS."""
        from ..runtime import DEFAULT_BATCH_BYTES

        if self.device.type == "cuda":
            budget = int(GPU_MEMORY_SHARE * self.torch.cuda.mem_get_info(self.device)[0])
        else:
            budget = DEFAULT_BATCH_BYTES
        by_memory = budget // (INCREMENTAL_SAFETY * max(1, runner.peak_row_bytes))
        by_elements = (2**31 - 1) // max(1, runner.largest_row_elements)
        return int(max(1, min(INCREMENTAL_ROWS, by_memory, by_elements)))

    def batches(self, forward, rows: int, batch_size: int, tuned: bool) -> np.ndarray:
        """forward(start) for each batch, under this object's GPU settings; the outputs joined, on the host."""
        outputs, backends = [], self.torch.backends
        saved = backends.cudnn.benchmark, backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32
        backends.cudnn.benchmark = tuned
        backends.cudnn.allow_tf32 = backends.cuda.matmul.allow_tf32 = self.tf32
        try:
            with self.torch.inference_mode():
                for start in range(0, rows, batch_size):
                    outputs.append(forward(start).cpu())
        finally:
            backends.cudnn.benchmark, backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved
        return self.torch.cat(outputs).numpy()


class IncrementalPasses:
    """`passes(values, starts)`: the raw output for rows of x with window values (R, C, *window) at starts (R, d),
    through a `WindowRunner` in batches of `batch_size` rows; a batch the runner cannot run goes whole, in
    batches of `whole_batch`."""

    def __init__(self, passes: TorchPasses, runner, window: tuple[int, ...], batch_size: int, whole_batch: int):
        self.passes, self.runner = passes, runner
        self.window, self.batch_size, self.whole_batch = window, batch_size, max(1, whole_batch)
        self.whole_rows = 0   # rows that ran whole because the runner failed on their batch

    def __call__(self, values: np.ndarray, starts: np.ndarray) -> np.ndarray:
        passes, output = self.passes, self.runner.outputs[0]

        def forward(start: int):
            rows = passes.array(values[start:start + self.batch_size])
            where = starts[start:start + self.batch_size]
            try:
                return self.runner(rows, where)[output]
            except Exception:  # a crop shape no rule foresaw, or no memory for this batch: whole samples (counted)
                self.whole_rows += len(rows)
                return self.whole(rows, where)

        return passes.batches(forward, len(values), self.batch_size, tuned=False)  # crop shapes vary: no tuning

    def whole(self, rows, where: np.ndarray):
        """The rows run as whole samples (x with each window written in, from the runner's channels-first entry
        tensor on), `whole_batch` at a time."""
        from ..crops import window_index

        runner, torch, output, parts = self.runner, self.passes.torch, self.runner.outputs[0], []
        x = runner.full[runner.input_name]
        for start in range(0, len(rows), self.whole_batch):
            part, at = rows[start:start + self.whole_batch], where[start:start + self.whole_batch]
            batch = x.expand(len(part), *x.shape[1:]).clone()
            batch[window_index(at, self.window, batch.shape[1], device=self.passes.device)] = part
            parts.append(runner.graph.run({runner.input_name: batch}, [output])[output])
        return torch.cat(parts)


def channels_first_entry(graph, input_name: str, sample_shape: tuple[int, ...]) -> str | None:
    """For channels-last samples (*spatial, C): the tensor holding them channels-first (N, C, *spatial), when the
    input's only reader makes it: a Transpose moving the last axis to 1 (tf2onnx's Keras exports), or a Reshape of
    a one-channel input to (N, 1, *spatial). None otherwise (the samples then run whole)."""
    readers = [step for step in graph.steps if input_name in step.inputs]
    if len(readers) != 1 or readers[0].op is None or readers[0].inputs[0] != input_name:
        return None
    step, rank = readers[0], len(sample_shape) + 1
    if step.node.op_type == "Transpose" and list(step.op.attr("perm", [])) == [0, rank - 1, *range(1, rank - 1)]:
        return step.outputs[0]
    shape = graph.constants.get(step.inputs[1]) if step.node.op_type == "Reshape" and len(step.inputs) > 1 else None
    if shape is not None and sample_shape[-1] == 1 and shape.tolist()[1:] == [1, *sample_shape[:-1]]:
        return step.outputs[0]
    return None
