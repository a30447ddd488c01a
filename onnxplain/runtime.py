"""onnxruntime sessions and the one batch runner every forward pass goes through."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Callable, Iterable

import numpy as np

from .errors import OnnxplainError

DEFAULT_BATCH_BYTES = 256 * 2**20  # memory budget for one batch of inputs + activations, rough
TOLERANCE = 1e-4  # largest relative difference between two runs of a float32 or float64 graph (torch, onnxruntime)


def available_providers() -> list[str]:
    """CUDA only when it really works (the library loads and a session runs), else CPU; never noisy."""
    import onnxruntime as ort

    names = ort.get_available_providers()
    if "CUDAExecutionProvider" in names and _cuda_session_works():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


_CUDA_WORKS: bool | None = None


def _cuda_session_works() -> bool:
    """Build a one-node session on CUDA with logging silenced; onnxruntime-gpu on a CPU machine fails here."""
    global _CUDA_WORKS
    if _CUDA_WORKS is None:
        import onnxruntime as ort
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "probe",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        options = _session_options()
        try:
            session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CUDAExecutionProvider"])
            _CUDA_WORKS = "CUDAExecutionProvider" in session.get_providers()
        except Exception:  # onnxruntime raises plain RuntimeErrors of several kinds here
            _CUDA_WORKS = False
    return _CUDA_WORKS


def _session_options():
    import onnxruntime as ort

    ort.set_default_logger_severity(4)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: failures raise anyway; onnxruntime-gpu on a CPU machine stays quiet
    options.intra_op_num_threads = session_threads()
    options.inter_op_num_threads = 1
    return options


def session_threads() -> int:
    """onnxruntime's threads per session: $ONNXPLAIN_THREADS when set to a whole number above 0, else every core."""
    value = os.environ.get("ONNXPLAIN_THREADS", "").strip()
    if value and not value.isdigit():
        raise OnnxplainError(f"ONNXPLAIN_THREADS must be a whole number of threads (0 or unset: every core), "
                             f"not {value!r}")
    return int(value or 0) or (os.cpu_count() or 1)


def make_session(model_bytes: bytes, providers: list[str] | None = None):
    """An inference session for serialized ONNX bytes on the chosen providers. The options are read first: a bad
    $ONNXPLAIN_THREADS is its own error, not one of the model's."""
    import onnxruntime as ort

    options, providers = _session_options(), providers or available_providers()
    try:
        return ort.InferenceSession(model_bytes, options, providers=providers)
    except Exception as error:  # onnxruntime has no public exception hierarchy
        raise OnnxplainError(f"onnxruntime cannot run this model: {_last_line(error)}") from None


def _last_line(error: Exception) -> str:
    """The message's last line: where onnxruntime's multi-line errors (a stack of contexts) state the cause."""
    text = str(error).strip().splitlines()
    return text[-1] if text else type(error).__name__


def batch_size_for(sample_bytes: int, budget_bytes: int = DEFAULT_BATCH_BYTES, activation_factor: int = 32) -> int:
    """How many samples fit one batch: the input's size times a rough activation factor under the budget."""
    return max(1, int(budget_bytes // max(1, sample_bytes * activation_factor)))


def run_batched(fn: Callable[[np.ndarray], list[np.ndarray]], x: np.ndarray, batch_size: int,
                progress: bool | str = False) -> list[np.ndarray]:
    """Apply `fn` (batch -> list of arrays, batch first) over `x` in batches and concatenate the results."""
    if len(x) == 0:
        raise OnnxplainError("no inputs to run")
    chunks: list[list[np.ndarray]] = []
    for start in progress_iter(range(0, len(x), batch_size), progress, total=-(-len(x) // batch_size)):
        chunks.append(fn(x[start:start + batch_size]))
    return [np.concatenate([chunk[i] for chunk in chunks]) for i in range(len(chunks[0]))]


PROGRESS_DELAY_S = 0.5  # bars appear only for work that lasts longer: long jobs show an ETA, short ones stay quiet


def progress_bar(iterable=None, **options):
    """A tqdm bar (notebook-aware) that shows only after PROGRESS_DELAY_S and clears itself when done; off where
    stderr is no terminal (a log file, a pipe), which would collect every frame."""
    from tqdm.auto import tqdm

    if not bars_visible(tqdm):
        options["disable"] = True
    return tqdm(iterable, delay=PROGRESS_DELAY_S, leave=False, **options)


def bars_visible(tqdm_class) -> bool:
    """Whether a bar has somewhere to draw: a notebook, or stderr on a terminal."""
    from tqdm.notebook import tqdm_notebook

    stream = sys.stderr
    return issubclass(tqdm_class, tqdm_notebook) or bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def optional_bar(enabled: bool, total: int, desc: str, unit: str):
    """A progress bar (see `progress_bar`) for the block, or None when progress is off."""
    if not enabled:
        yield None
        return
    bar = progress_bar(total=total, desc=desc, unit=unit)
    try:
        yield bar
    finally:
        bar.close()


def progress_iter(iterable: Iterable, progress: bool | str, total: int, unit: str = "batch"):
    """`iterable` with a progress bar (see `progress_bar`) when `progress` is true (a string names the bar)."""
    if not progress:
        return iterable
    desc = progress if isinstance(progress, str) else "forward passes"
    return progress_bar(iterable, total=total, desc=desc, unit=unit)


FEED_TYPES = {"float": np.float32, "double": np.float64, "float16": np.float16, "bool": np.bool_}


def random_feed(session, batch: int = 1, sizes: dict[int, int] | None = None) -> dict[str, np.ndarray]:
    """A session's seeded random input in [0, 1) for checks, in the input's own type (a float16 model takes no
    float32); ids 0 and 1 for integer and boolean inputs (token ids, categories, masks); fixed dims taken from the
    session, free ones from `sizes` ({axis: size}) or set to 32."""
    rng = np.random.default_rng(0)
    (value,) = session.get_inputs()
    sizes = sizes or {}
    shape = [batch] + [d if isinstance(d, int) and d > 0 else sizes.get(axis, 32)
                       for axis, d in enumerate(value.shape[1:], start=1)]
    name = value.type[len("tensor("):-1]
    try:
        dtype = np.dtype(FEED_TYPES.get(name, name))   # int64, uint8, ...: numpy's own names
    except TypeError:   # string, bfloat16, float8...: no numpy type to feed onnxruntime
        raise OnnxplainError(f"this model takes {name} input {value.name!r}; onnxplain explains models that take "
                             "numbers (float16/32/64, integers)") from None
    if dtype.kind in "iub":
        return {value.name: rng.integers(0, 2, size=shape).astype(dtype)}
    return {value.name: rng.random(shape).astype(dtype)}


def tolerance(proto) -> float:
    """TOLERANCE, or 10 units of rounding of the least precise float type the graph holds, takes or casts to:
    a float16 graph's own rounding (1e-3) puts torch and onnxruntime further apart than 1e-4."""
    from onnx import TensorProto

    rounding = {TensorProto.FLOAT16: 2.0 ** -10, TensorProto.BFLOAT16: 2.0 ** -7}   # machine epsilon of half types
    graph = proto.graph
    types = {t.data_type for t in graph.initializer}
    types |= {v.type.tensor_type.elem_type for v in [*graph.input, *graph.value_info, *graph.output]}
    types |= {a.i for node in graph.node if node.op_type == "Cast" for a in node.attribute if a.name == "to"}
    return max([TOLERANCE] + [10 * rounding[t] for t in types if t in rounding])
