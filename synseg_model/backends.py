"""Inference backends behind ``Segmenter(backend=...)``: TensorRT, PyTorch, and ONNX Runtime for the CPU.

Every backend runs the same ``SegmentationModule``: normalised images (B, 3, S, S) and text embeddings (K, D)
in, logits (B, K, S, S) out. The text is an input with K dynamic up to ``max_categories``, so a new vocabulary
never rebuilds an engine or re-exports a graph.

``auto`` picks tensorrt on CUDA where torch_tensorrt is installed, else torch on CUDA, else the CPU path,
and logs which and why. The CPU path (``CPU_BACKEND``) was chosen by measurement: ONNX Runtime beat eager
fp32, channels-last and bf16 autocast on the development CPU (``scripts/measure_cpu_paths.py``; figures in
docs/runtime.md).
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .clip import is_resnet, resize_pos_embed, visual_activations
from .engine_cache import EngineCache, EngineKey, weights_hash
from .model import SynSeg
from .options import PRECISIONS

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "torch", "onnxruntime")
CPU_BACKEND = "onnxruntime"
DTYPES = dict(zip(PRECISIONS, (torch.float32, torch.float16, torch.bfloat16)))   # in PRECISIONS' order
ONNX_OPSET = 17
DEFAULT_MAX_CATEGORIES = 32  # the largest vocabulary a Segmenter, its engines and the CLIs accept by default
CUDA_GRAPH_WARMUP = 3       # eager runs on a side stream before capture (cuDNN/cuBLAS pick their kernels)
TENSORRT_MIN_BLOCK = 1      # let TensorRT take every supported op, however small the block


class BackendUnavailable(RuntimeError):
    """A backend cannot run here (missing package, wrong device, unsupported precision); the message says why."""


class _FixedSizeVisual(nn.Module):
    """The parts of an open_clip ViT that ``visual_activations`` reads, with the position embedding resized once.

    Only the blocks up to the deepest extracted layer are kept, so an export carries no unused weights.
    """

    def __init__(self, visual: nn.Module, grid: tuple[int, int], depth: int):
        super().__init__()
        self.conv1 = visual.conv1
        self.ln_pre = visual.ln_pre
        self.class_embedding = visual.class_embedding
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList(visual.transformer.resblocks[:depth])
        pos = resize_pos_embed(visual.positional_embedding.detach(), grid)
        self.register_buffer("positional_embedding", pos.clone(), persistent=False)


class SegmentationModule(nn.Module):
    """SynSeg's image encoder and decoder as one module, for one fixed input size.

    The exact module every backend runs: TensorRT compiles it, ONNX exports it. It shares its weights with
    the ``SynSeg`` it was built from but holds only those of the image path (no text tower, no blocks past
    the deepest extracted layer).
    """

    def __init__(self, model: SynSeg, input_size: int):
        super().__init__()
        self.input_size = int(input_size)
        self.patch_size = model.patch_size
        self.text_dim = model.text_dim
        self.layers = tuple(model.config.extract_layers)
        grid = (self.input_size // self.patch_size,) * 2
        visual = model.clip.visual
        # A ResNet tower has nothing that depends on the input size.
        self.visual = visual if is_resnet(visual) else _FixedSizeVisual(visual, grid, max(self.layers) + 1)
        self.decoder = model.decoder

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images and (K, D) raw text embeddings -> (B, K, S, S) logits."""
        activations = visual_activations(self.visual, images, self.layers)
        # SynSeg.decode reads only .decoder, .patch_size and .text_dim of its instance; calling it on this
        # module keeps a single implementation of decoding.
        return SynSeg.decode(self, activations, text, (self.input_size, self.input_size))


def example_inputs(module: SegmentationModule, categories: int,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Zero images (1, 3, S, S) and text (categories, D) for tracing ``module``."""
    size = module.input_size
    return (torch.zeros(1, 3, size, size, device=device), torch.zeros(categories, module.text_dim, device=device))


def export_program(module: SegmentationModule, max_categories: int,
                   device: torch.device | str = "cpu") -> torch.export.ExportedProgram:
    """``torch.export`` of ``module`` (batch 1) with K dynamic in [1, max_categories]; what TensorRT compiles."""
    # An example K of 2 keeps torch.export from specialising the dimension to 1.
    images, text = example_inputs(module, min(2, max_categories), device)
    dynamic = None
    if max_categories > 1:
        dynamic = {"images": None, "text": {0: torch.export.Dim("categories", min=1, max=max_categories)}}
    with torch.no_grad():
        return torch.export.export(module, (images, text), dynamic_shapes=dynamic)


def category_buckets(max_categories: int) -> list[int]:
    """Static K slots for CUDA graphs: powers of two below ``max_categories``, then ``max_categories``."""
    buckets = [1]
    while buckets[-1] * 2 < max_categories:
        buckets.append(buckets[-1] * 2)
    return buckets + [max_categories] if max_categories > 1 else buckets


def pad_categories(text: torch.Tensor, buckets: list[int]) -> torch.Tensor:
    """Zero-pad (K, D) text to the smallest bucket >= K. Categories are decoded independently, so padding
    changes no real category's logits."""
    k = text.shape[0]
    slots = next((b for b in buckets if b >= k), None)
    if slots is None:
        raise ValueError(f"{k} categories exceed the largest slot {buckets[-1]}")
    return torch.cat([text, text.new_zeros(slots - k, text.shape[1])]) if slots > k else text


class Backend:
    """Runs a ``SegmentationModule``. Subclasses set ``name`` and implement ``__call__``."""

    name = "backend"

    def __init__(self, device: torch.device, precision: str):
        self.device = torch.device(device)
        self.precision = precision

    def __call__(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float32 normalised images and (K, D) float32 text on ``device`` -> (B, K, S, S) float32."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.name} ({self.precision} on {self.device})"


def _check_precision(backend: str, precision: str, allowed: tuple[str, ...]) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision not in allowed:
        raise BackendUnavailable(f"{backend} does not run {precision} here (supported: {', '.join(allowed)})")


@dataclass
class _CapturedGraph:
    graph: "torch.cuda.CUDAGraph"
    images: torch.Tensor
    text: torch.Tensor
    output: torch.Tensor


class TorchBackend(Backend):
    """PyTorch eager, optionally ``torch.compile``d; fp16/bf16 autocast on CUDA (bf16 on CPU too).

    On CUDA it replays CUDA graphs: one graph per (image shape, K slot), the text zero-padded to the slot
    (``category_buckets``) and the output sliced back, so a vocabulary change never recaptures unless it
    reaches a new slot. ``static_categories=True`` applies the same padding without graphs (the CPU test of
    that logic).
    """

    name = "torch"

    def __init__(self, module: SegmentationModule, device: torch.device, precision: str = "fp32",
                 compile: bool = False, cuda_graphs: bool = True, max_categories: int = DEFAULT_MAX_CATEGORIES,
                 static_categories: bool | None = None):
        device = torch.device(device)
        _check_precision("torch", precision, ("fp32", "fp16", "bf16") if device.type == "cuda" else ("fp32", "bf16"))
        super().__init__(device, precision)
        self.module = module.to(device).eval()
        self.compiled = bool(compile)
        # dynamic=False: each K slot gets its own specialised graph, as the CUDA graphs do.
        self._forward = torch.compile(self.module, dynamic=False) if compile else self.module
        self.cuda_graphs = bool(cuda_graphs) and device.type == "cuda"
        self.static_categories = self.cuda_graphs if static_categories is None else bool(static_categories)
        self.buckets = category_buckets(max_categories)
        self._graphs: dict[tuple, _CapturedGraph] = {}
        self._lock = threading.Lock()   # graphs own static buffers: one replay at a time

    def describe(self) -> str:
        extras = [x for x, on in (("torch.compile", self.compiled), ("CUDA graphs", self.cuda_graphs)) if on]
        return f"torch ({self.precision} on {self.device}{''.join(', ' + x for x in extras)})"

    def _run(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        # cache_enabled=False: autocast's weight-cast cache must not outlive a CUDA graph capture.
        with torch.autocast(self.device.type, dtype=DTYPES[self.precision],
                            enabled=self.precision != "fp32", cache_enabled=False):
            return self._forward(images, text).float()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if not self.static_categories:
            return self._run(images, text)
        k = text.shape[0]
        padded = pad_categories(text, self.buckets)
        out = self._replay(images, padded) if self.cuda_graphs else self._run(images, padded)
        return out[:, :k]

    def _replay(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        key = (tuple(images.shape), text.shape[0])
        with self._lock:
            captured = self._graphs.get(key)
            if captured is None:
                captured = self._capture(images, text)
                if captured is None:
                    return self._run(images, text)
                self._graphs[key] = captured
            captured.images.copy_(images)
            captured.text.copy_(text)
            captured.graph.replay()
            return captured.output.clone()

    def _capture(self, images: torch.Tensor, text: torch.Tensor) -> _CapturedGraph | None:
        static_images, static_text = images.clone(), text.clone()
        try:
            side = torch.cuda.Stream(device=self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                for _ in range(CUDA_GRAPH_WARMUP):
                    self._run(static_images, static_text)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                output = self._run(static_images, static_text)
        except RuntimeError as exc:  # an op that cannot be captured: run eagerly from now on
            log.warning("CUDA graph capture failed (%s); running without CUDA graphs", exc)
            self.cuda_graphs = False
            return None
        log.info("captured a CUDA graph for images %s and %d category slots", tuple(images.shape), text.shape[0])
        return _CapturedGraph(graph, static_images, static_text, output)


@contextlib.contextmanager
def _mha_fastpath(enabled: bool) -> Iterator[None]:
    # The fused attention kernel (aten::_native_multi_head_attention) has no ONNX export.
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def export_onnx(module: SegmentationModule, path: str | Path, max_categories: int) -> None:
    """Write ``module`` (on CPU, batch 1) as ONNX with K dynamic (input ``text`` and output ``logits`` axis 1).

    Uses the TorchScript-based exporter, which needs no extra package (the dynamo exporter needs onnxscript).
    """
    images, text = example_inputs(module, min(2, max_categories))
    with torch.no_grad(), _mha_fastpath(False), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings: the graph is checked by tests
        torch.onnx.export(module, (images, text), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["images", "text"], output_names=["logits"],
                          dynamic_axes={"text": {0: "categories"}, "logits": {1: "categories"}})


class OnnxRuntimeBackend(Backend):
    """ONNX Runtime on the CPU (fp32), from an ONNX graph of the same module, cached on disk."""

    name = "onnxruntime"

    def __init__(self, module: SegmentationModule, max_categories: int, cache: EngineCache, model_hash: str,
                 precision: str = "fp32", threads: int | None = None):
        _check_precision("onnxruntime", precision, ("fp32",))
        try:
            import onnx
            import onnxruntime as ort
        except ImportError as exc:
            raise BackendUnavailable(f"onnxruntime is not installed ({exc})") from exc
        super().__init__(torch.device("cpu"), precision)
        key = EngineKey("onnxruntime", model_hash, module.input_size, max_categories, precision, "any",
                        (("torch", torch.__version__), ("onnx", onnx.__version__), ("opset", str(ONNX_OPSET))))
        path = cache.lookup(key, ".onnx")
        if path is None:
            log.info("exporting the model to ONNX (once; cached in %s)", cache.root)
            cpu_module = module.to("cpu").eval()
            path = cache.store(key, ".onnx", lambda p: export_onnx(cpu_module, p, max_categories))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # Idle worker threads sleep instead of spinning: on a robot's shared CPU, spinning steals cycles from
        # the other nodes, and measured here it was no faster (1.22 s vs 1.33 s p50, ViT-B/16 at 352 px, K=10).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path

    def __call__(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        text_np = text.detach().float().cpu().numpy()
        outs = [self.session.run(None, {"images": image[None].detach().float().cpu().numpy(), "text": text_np})[0]
                for image in images]
        return torch.from_numpy(np.concatenate(outs))


def tensorrt_status() -> tuple[object | None, str]:
    """(torch_tensorrt module or None, why): whether Torch-TensorRT can be used in this environment."""
    try:
        import torch_tensorrt
    except Exception as exc:  # ImportError, or a broken install raising OSError on its libraries
        return None, f"torch_tensorrt is not importable ({type(exc).__name__}: {exc})"
    return torch_tensorrt, f"torch_tensorrt {getattr(torch_tensorrt, '__version__', '?')} is installed"


def tensorrt_versions(torch_tensorrt: object) -> tuple[tuple[str, str], ...]:
    """(package, version) pairs that make a TensorRT engine incompatible when they change."""
    try:
        import tensorrt
        trt_version = tensorrt.__version__
    except ImportError:
        trt_version = "unknown"
    return (("tensorrt", trt_version), ("torch_tensorrt", getattr(torch_tensorrt, "__version__", "unknown")),
            ("torch", torch.__version__))


def tensorrt_key(torch_tensorrt: object, model_hash: str, input_size: int, max_categories: int,
                 precision: str, device: torch.device) -> EngineKey:
    return EngineKey("tensorrt", model_hash, input_size, max_categories, precision,
                     torch.cuda.get_device_name(device), tensorrt_versions(torch_tensorrt))


def compile_tensorrt(torch_tensorrt, module: SegmentationModule, max_categories: int, precision: str,
                     device: torch.device) -> torch.fx.GraphModule:
    """Compile ``module`` with Torch-TensorRT (dynamo IR) for images (1, 3, S, S) and text (1..max K, D)."""
    module = module.to(device).eval()
    program = export_program(module, max_categories, device)
    size, dim = module.input_size, module.text_dim
    opt = min(max(2, max_categories // 2), max_categories)
    inputs = [torch_tensorrt.Input(shape=(1, 3, size, size), dtype=torch.float32),
              torch_tensorrt.Input(min_shape=(1, dim), opt_shape=(opt, dim), max_shape=(max_categories, dim),
                                   dtype=torch.float32)]
    settings: dict = {"arg_inputs": inputs, "min_block_size": TENSORRT_MIN_BLOCK, "device": device}
    if precision != "fp32":
        low = DTYPES[precision]
        params = inspect.signature(torch_tensorrt.dynamo.compile).parameters
        if "enable_autocast" in params:
            # Newer releases build strongly typed networks and ignore enabled_precisions; autocast lowers
            # the eligible layers and keeps the sensitive ones (norms, softmax) in fp32.
            settings.update(use_explicit_typing=True, enable_autocast=True, autocast_low_precision_type=low)
        else:
            settings["enabled_precisions"] = {torch.float32, low}
    return torch_tensorrt.dynamo.compile(program, **settings)


def build_tensorrt_engine(torch_tensorrt, module: SegmentationModule, path: Path, max_categories: int,
                          precision: str, device: torch.device) -> None:
    """Compile and serialise as an ExportedProgram (loadable with ``torch.export.load`` once torch_tensorrt
    is imported)."""
    compiled = compile_tensorrt(torch_tensorrt, module, max_categories, precision, device)
    kwargs: dict = {"output_format": "exported_program",
                    "arg_inputs": list(example_inputs(module, min(2, max_categories), device))}
    if "retrace" in inspect.signature(torch_tensorrt.save).parameters:
        kwargs["retrace"] = False  # keep the graph's symbolic K instead of re-tracing at the example K
    torch_tensorrt.save(compiled, str(path), **kwargs)


class TensorRTBackend(Backend):
    """A Torch-TensorRT engine of the module, built once per cache key and loaded from the cache afterwards."""

    name = "tensorrt"

    def __init__(self, module: SegmentationModule, device: torch.device, max_categories: int, cache: EngineCache,
                 model_hash: str, precision: str = "fp16"):
        device = torch.device(device)
        if device.type != "cuda":
            raise BackendUnavailable(f"tensorrt needs a CUDA device, not {device}")
        _check_precision("tensorrt", precision, ("fp32", "fp16", "bf16"))
        torch_tensorrt, reason = tensorrt_status()
        if torch_tensorrt is None:
            raise BackendUnavailable(reason)
        super().__init__(device, precision)
        key = tensorrt_key(torch_tensorrt, model_hash, module.input_size, max_categories, precision, device)
        path = cache.lookup(key, ".ep")
        if path is None:
            log.info("building a TensorRT engine (%s, %d px, K <= %d); cached in %s", precision, module.input_size,
                     max_categories, cache.root)
            path = cache.store(key, ".ep", lambda p: build_tensorrt_engine(torch_tensorrt, module, p,
                                                                           max_categories, precision, device))
        else:
            log.info("loading the TensorRT engine %s", path)
        self.engine = torch.export.load(str(path)).module().to(device)
        self.path = path

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.engine(image[None], text).float() for image in images])


@torch.no_grad()
def agreement_with_eager(backend: Backend, module: SegmentationModule, categories: int, seed: int = 0,
                         threshold: float = 0.5) -> tuple[float, float]:
    """How far ``backend`` is from eager fp32 ``module`` on random images and text embeddings.

    Returns:
        (largest absolute difference of the probabilities sigmoid(logits), share of pixels whose mask
        ``p > threshold`` agrees), over all K maps of one random (1, 3, S, S) image.
    """
    device = next(module.parameters()).device
    g = torch.Generator().manual_seed(seed)
    size = module.input_size
    images = torch.randn(1, 3, size, size, generator=g).to(device)
    text = torch.randn(categories, module.text_dim, generator=g).to(device)
    reference = torch.sigmoid(module.eval()(images, text).float())
    probs = torch.sigmoid(backend(images.to(backend.device), text.to(backend.device)).float()).to(device)
    agree = ((probs > threshold) == (reference > threshold)).float().mean().item()
    return (probs - reference).abs().max().item(), agree


@dataclass
class BackendOptions:
    """What ``create_backend`` needs besides the module and device.

    Attributes:
        max_categories: largest vocabulary the backend must accept.
        precision: "fp32" | "fp16" | "bf16", or None for the backend's default (fp16 on CUDA, fp32 on CPU).
        compile: wrap the torch backend in ``torch.compile``.
        cuda_graphs: let the torch backend replay CUDA graphs on CUDA.
        cache_dir: engine cache directory (None: ``default_cache_dir()``).
    """

    max_categories: int = DEFAULT_MAX_CATEGORIES
    precision: str | None = None
    compile: bool = False
    cuda_graphs: bool = True
    cache_dir: str | Path | None = None


def default_precision(backend: str, device: torch.device) -> str:
    return "fp16" if device.type == "cuda" and backend in ("tensorrt", "torch") else "fp32"


def auto_candidates(device: torch.device, tensorrt: tuple[bool, str],
                    compile: bool = False) -> list[tuple[str, str]]:
    """The backends ``auto`` tries on ``device``, best first, each with the reason for trying it.

    Args:
        tensorrt: (available, why), as ``tensorrt_status`` tells.
        compile: torch.compile was asked for, which only the torch backend does.
    """
    if device.type == "cuda":
        available, why = tensorrt
        if available and not compile:
            return [("tensorrt", f"CUDA device and {why}"), ("torch", "fallback after tensorrt")]
        cause = "compile=True asks for torch.compile" if available else why
        return [("torch", f"CUDA device, no tensorrt: {cause}")]
    if compile:
        return [("torch", f"{device.type} device and compile=True asks for torch.compile")]
    return [(CPU_BACKEND, f"{device.type} device: {CPU_BACKEND} is the fastest measured CPU path"),
            ("torch", f"fallback after {CPU_BACKEND}")]


def build_backend(name: str, module: SegmentationModule, device: torch.device, options: BackendOptions,
                  model_hash: str | None = None) -> Backend:
    """Build the backend ``name`` (not "auto"); raises BackendUnavailable when it cannot run here."""
    precision = options.precision or default_precision(name, device)
    if name == "torch":
        return TorchBackend(module, device, precision, compile=options.compile, cuda_graphs=options.cuda_graphs,
                            max_categories=options.max_categories)
    cache = EngineCache(options.cache_dir)
    model_hash = model_hash or module_hash(module)
    if name == "onnxruntime":
        if device.type != "cpu":
            raise BackendUnavailable(f"onnxruntime runs on the CPU here, not {device}")
        return OnnxRuntimeBackend(module, options.max_categories, cache, model_hash, precision)
    if name == "tensorrt":
        return TensorRTBackend(module, device, options.max_categories, cache, model_hash, precision)
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")


def module_hash(module: SegmentationModule) -> str:
    """Cache identity of a module: its weights, plus the input size and layers baked into its graph."""
    return weights_hash(module, extra=f"size={module.input_size}|layers={module.layers}|patch={module.patch_size}")


def create_backend(requested: str, model: SynSeg, device: torch.device, input_size: int,
                   options: BackendOptions | None = None) -> Backend:
    """The backend ``requested`` ("auto", "tensorrt", "torch", "onnxruntime") for ``model`` on ``device``.

    "auto" tries ``auto_candidates`` in order, logging its choice and why, and every fallback with its cause.
    An explicit name either works or raises (ValueError for bad options, BackendUnavailable otherwise).
    """
    options = options or BackendOptions()
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; choose from {', '.join(BACKENDS)}")
    if options.precision is not None and options.precision not in PRECISIONS:
        raise ValueError(f"unknown precision {options.precision!r}; choose from {', '.join(PRECISIONS)}")
    module = SegmentationModule(model, input_size).eval()
    if requested != "auto":
        return build_backend(requested, module, device, options)
    status = tensorrt_status() if device.type == "cuda" else (None, "not on CUDA")
    candidates = auto_candidates(device, (status[0] is not None, status[1]), options.compile)
    for (name, why), (next_name, _) in zip(candidates, candidates[1:]):
        try:
            backend = build_backend(name, module, device, options)
        except Exception as exc:  # unavailable, or a failed export/engine build: the robot must still start
            log.warning("backend auto: %s did not start (%s: %s); trying %s", name, type(exc).__name__, exc,
                        next_name)
            continue
        log.info("backend auto: chose %s because %s", backend.describe(), why)
        return backend
    name, why = candidates[-1]
    backend = build_backend(name, module, device, options)
    log.info("backend auto: chose %s because %s", backend.describe(), why)
    return backend
