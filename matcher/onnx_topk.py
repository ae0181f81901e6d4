"""Exact block top-k as an ONNX graph, and the onnxruntime session that runs it.

One graph scores a batch of probes against one block of gallery rows and keeps
the k best per probe:

    scores = Gemm(probes, Cast(block), bias, transB=1)   # probes @ block.T + bias
    values, indices = TopK(scores, k, largest=1, sorted=1)

`probes` is float32 (b, d); `block` is (n, d) in the storage type (float32 or
float16 - float16 is cast to float32 inside the graph, so arithmetic is always
float32 and only the stored values are rounded); `bias` is float32 (n,), 0 for
a live row and -inf for a dead one, so dead rows score -inf whatever the probe;
`k` is an int64 (1,) input, so one session serves every k (k <= n). Gemm is
MatMul with the transpose and the bias add folded in: rows stay row-major (the
layout `rows()` and Verify want) without a Transpose copy.

`build_int8_model` is its int8 twin for `matcher.quantized`: integer products
of int8 codes (com.microsoft's MatMulIntegerToFloat), scaled per row, then the
same TopK; it runs on the CPU provider.

The float graph runs on the CUDA execution provider when onnxruntime can start
one, else on the CPU provider. Sessions are shared (InferenceSession.run is
thread-safe) and cached per (storage type, providers, thread count).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

Storage = Literal["float32", "float16"]
STORAGE_TYPES: tuple[Storage, ...] = ("float32", "float16")
OPSET = 17
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_KNOWN = (CUDA, CPU)
_ORT_DEFAULT_LOG_SEVERITY = 2  # warning; onnxruntime has no getter to save it
_probe_lock = threading.Lock()


def build_model(storage: Storage = "float32") -> onnx.ModelProto:
    """The block top-k graph for gallery blocks stored as `storage`."""
    if storage not in STORAGE_TYPES:
        raise ValueError(f"storage must be one of {STORAGE_TYPES}, not {storage!r}")
    elem = TensorProto.FLOAT16 if storage == "float16" else TensorProto.FLOAT
    inputs = [
        helper.make_tensor_value_info("probes", TensorProto.FLOAT, ["b", "d"]),
        helper.make_tensor_value_info("block", elem, ["n", "d"]),
        helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["n"]),
        helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
    ]
    outputs = [
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", "k_out"]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, ["b", "k_out"]),
    ]
    nodes = []
    rows = "block"
    if storage == "float16":
        nodes.append(helper.make_node("Cast", ["block"], ["block_f32"], to=TensorProto.FLOAT))
        rows = "block_f32"
    nodes.append(helper.make_node("Gemm", ["probes", rows, "bias"], ["all_scores"], transB=1))
    nodes.append(
        helper.make_node(
            "TopK", ["all_scores", "k"], ["scores", "labels"], axis=-1, largest=1, sorted=1
        )
    )
    graph = helper.make_graph(nodes, f"block_topk_{storage}", inputs, outputs)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="tunggal.matcher.onnx_topk",
    )
    model.ir_version = 8  # the IR that opset 17 shipped with; any onnxruntime >= 1.13 loads it
    onnx.checker.check_model(model, full_check=True)
    return model


def build_int8_model() -> onnx.ModelProto:
    """The block top-k graph for int8 blocks with a scale per row (CPU only).

    `probes` are uint8 (b, d): a probe quantised to int8, plus 128; `block` is
    int8 (d, n), one gallery row per column; `scale` float32 (n,) each row's
    scale; `bias` as in `build_model`. com.microsoft's MatMulIntegerToFloat
    multiplies the integers exactly (int32 sums) and scales each column:

        scores = ((probes - 128) @ block) * scale + bias
        values, indices = TopK(scores, k)

    so `scores` are the probe's integer codes against each row's int8
    reconstruction; the caller multiplies by the probe's own scale (it does
    not change the order) and bounds the quantisation error (matcher.quantized).
    """
    inputs = [
        helper.make_tensor_value_info("probes", TensorProto.UINT8, ["b", "d"]),
        helper.make_tensor_value_info("block", TensorProto.INT8, ["d", "n"]),
        helper.make_tensor_value_info("scale", TensorProto.FLOAT, ["n"]),
        helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["n"]),
        helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
    ]
    outputs = [
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["b", "k_out"]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, ["b", "k_out"]),
    ]
    constants = [
        helper.make_tensor("probe_scale", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("probe_zero", TensorProto.UINT8, [], [128]),
    ]
    nodes = [
        helper.make_node(
            "MatMulIntegerToFloat",
            ["probes", "block", "probe_scale", "scale", "probe_zero", "", "bias"],
            ["all_scores"],
            domain="com.microsoft",
        ),
        helper.make_node(
            "TopK", ["all_scores", "k"], ["scores", "labels"], axis=-1, largest=1, sorted=1
        ),
    ]
    graph = helper.make_graph(nodes, "block_topk_int8", inputs, outputs, initializer=constants)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
        producer_name="tunggal.matcher.onnx_topk",
    )
    model.ir_version = 8
    onnx.checker.check_model(model)  # full_check cannot infer com.microsoft's shapes
    return model


def _session_options(intra_op_threads: int) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads  # 0: onnxruntime's default (physical cores)
    # Idle intra-op threads sleep instead of spinning: a matcher node shares its cores
    # with gRPC and HNSW searches, and spinning measured slower there (bench.exact).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


@cache
def cuda_available() -> bool:
    """Whether onnxruntime can start its CUDA provider here (probed once, quietly).

    `get_available_providers()` lists CUDA for every onnxruntime-gpu build, GPU
    or not; only opening a session tells, so open a tiny one.
    """
    if CUDA not in ort.get_available_providers():
        return False
    with _probe_lock:
        ort.set_default_logger_severity(4)  # the failed library load logs an error otherwise
        try:
            session = ort.InferenceSession(
                build_model().SerializeToString(), _session_options(1), providers=[CUDA, CPU]
            )
            return bool(session.get_providers()[0] == CUDA)
        except Exception:  # noqa: BLE001 - any failure means no usable CUDA here
            return False
        finally:
            ort.set_default_logger_severity(_ORT_DEFAULT_LOG_SEVERITY)


def resolve_providers(providers: Sequence[str] | None) -> tuple[str, ...]:
    """Providers to use: `None` means CUDA when it works here, else CPU."""
    if providers is None:
        return (CUDA, CPU) if cuda_available() else (CPU,)
    chosen = tuple(providers)
    unknown = [p for p in chosen if p not in _KNOWN]
    if not chosen or unknown:
        raise ValueError(f"providers must be drawn from {_KNOWN}, got {chosen!r}")
    return chosen


@dataclass(frozen=True)
class TopKResult:
    """One block's result: (b, k) float32 scores and int64 block-local indices."""

    scores: npt.NDArray[np.float32]
    indices: npt.NDArray[np.int64]


class BlockTopK:
    """A session running the block top-k graph, and the device its inputs live on."""

    def __init__(self, storage: Storage, providers: tuple[str, ...], intra_op_threads: int):
        self.storage: Storage = storage
        self.session = ort.InferenceSession(
            build_model(storage).SerializeToString(),
            _session_options(intra_op_threads),
            providers=list(providers),
        )
        self.providers: tuple[str, ...] = tuple(self.session.get_providers())
        self.device: str = "cuda" if self.providers[0] == CUDA else "cpu"

    @property
    def on_cpu(self) -> bool:
        """True when inputs are read straight from host memory."""
        return self.device == "cpu"

    def to_device(self, array: npt.NDArray[Any]) -> ort.OrtValue:
        """An OrtValue for `array` on this session's device.

        On the CPU the OrtValue wraps the array's memory (no copy, and later
        writes to the array show through); on CUDA it is a device copy.
        """
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def run(
        self, probes: ort.OrtValue, block: ort.OrtValue, bias: ort.OrtValue, k: int
    ) -> TopKResult:
        """Top `k` (<= block rows) of `probes` against `block`, best first."""
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("probes", probes)
        binding.bind_ortvalue_input("block", block)
        binding.bind_ortvalue_input("bias", bias)
        binding.bind_cpu_input("k", np.array([k], dtype=np.int64))
        binding.bind_output("scores", "cpu")
        binding.bind_output("labels", "cpu")
        self.session.run_with_iobinding(binding)
        scores, indices = binding.copy_outputs_to_cpu()
        return TopKResult(scores=scores, indices=indices)


_sessions: dict[tuple[Storage, tuple[str, ...], int], BlockTopK] = {}
_sessions_lock = threading.Lock()


def block_topk(
    storage: Storage = "float32",
    providers: Sequence[str] | None = None,
    intra_op_threads: int = 0,
) -> BlockTopK:
    """The shared BlockTopK for these settings (created on first use)."""
    key = (storage, resolve_providers(providers), intra_op_threads)
    with _sessions_lock:
        engine = _sessions.get(key)
        if engine is None:
            engine = BlockTopK(*key)
            _sessions[key] = engine
        return engine


class Int8BlockTopK:
    """A CPU session running `build_int8_model` (see there for the inputs)."""

    def __init__(self, intra_op_threads: int) -> None:
        self.session = ort.InferenceSession(
            build_int8_model().SerializeToString(),
            _session_options(intra_op_threads),
            providers=[CPU],
        )

    def run(
        self,
        probes: npt.NDArray[np.uint8],
        block: npt.NDArray[np.int8],
        scale: npt.NDArray[np.float32],
        bias: npt.NDArray[np.float32],
        k: int,
    ) -> TopKResult:
        """Top `k` (<= block columns) integer-code scores of `probes` against `block`."""
        scores, indices = self.session.run(
            None,
            {
                "probes": probes,
                "block": block,
                "scale": scale,
                "bias": bias,
                "k": np.array([k], dtype=np.int64),
            },
        )
        return TopKResult(scores=scores, indices=indices)


_int8_sessions: dict[int, Int8BlockTopK] = {}


def int8_block_topk(intra_op_threads: int = 0) -> Int8BlockTopK:
    """The shared Int8BlockTopK for this thread count (created on first use)."""
    with _sessions_lock:
        engine = _int8_sessions.get(intra_op_threads)
        if engine is None:
            engine = Int8BlockTopK(intra_op_threads)
            _int8_sessions[intra_op_threads] = engine
        return engine
