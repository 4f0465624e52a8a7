"""Speed benchmark: SynSeg's backends side by side with Hugging Face CLIPSeg and a naive wrapper.

    python -m synseg_model.benchmark --device cpu --backends auto,torch --categories 1,5,10,20 \\
        --sizes 224,352 --compare clipseg,naive --json bench.json --plot bench.png

Rows (one per implementation, backend, size and K) hold the p50/p95 latency and FPS of the model alone
(normalised image and text embeddings in, logits out) and of the full ``Segmenter.segment`` (uint8 camera
frame in, masks out), the peak memory and the parameter count. The comparisons run in the same process:

- ``clipseg``: transformers' ``CLIPSegForImageSegmentation`` (ViT-B/16, refined decoder) with random weights,
  at the same size and K. It runs its image encoder once per prompt, and its text encoder every call.
- ``naive``: SynSeg with the text re-encoded every frame, as some ROS wrappers do (first backend listed).

Timings use random weights: speed does not depend on the values. Memory is the CUDA allocator's peak on
CUDA, and the process's peak resident set (VmHWM, reset per row) on the CPU.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import platform
import resource
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .backends import DEFAULT_MAX_CATEGORIES, BackendUnavailable
from .clip import get_tokenizer
from .config import IMAGENET_MEAN, IMAGENET_STD
from .factory import create_model, list_models, load_checkpoint
from .model import SynSeg
from .runtime import Segmenter, image_to_tensor, resolve_device

log = logging.getLogger(__name__)

IMPLS = ("synseg", "clipseg", "naive")
MEBIBYTE = 2 ** 20
PROMPT = "a photo of a category {}."


def build_model(name_or_path: str) -> SynSeg:
    """A bundled architecture (``list_models()``) or config YAML with random weights (speed does not depend on
    them), else a model by name or path (``list_pretrained()``, ``hf-hub:ORG/REPO``, a ``.safetensors`` file)."""
    if name_or_path in list_models() or Path(name_or_path).suffix in (".yaml", ".yml"):
        return create_model(name_or_path, clip_pretrained=None)
    return load_checkpoint(name_or_path)


@dataclass(frozen=True)
class BackendSpec:
    """One ``--backends`` item, ``NAME[:PRECISION][:compile]`` (e.g. ``torch:bf16``, ``torch:fp16:compile``)."""

    name: str
    precision: str | None = None
    compile: bool = False

    @classmethod
    def parse(cls, text: str) -> "BackendSpec":
        name, *rest = text.strip().split(":")
        compile = "compile" in rest
        others = [r for r in rest if r != "compile"]
        if len(others) > 1 or not name:
            raise ValueError(f"bad backend spec {text!r}; expected NAME[:PRECISION][:compile]")
        return cls(name, others[0] if others else None, compile)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip() and v.strip() != "none"]


def _frame_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 480x640, got {text!r}") from exc
    return h, w


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m synseg_model.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    what = parser.add_argument_group("what to run")
    what.add_argument("--model", default="synseg-vit-b-16",
                      help="architecture name or config YAML (random weights), or a model: a name from "
                           "`python -m synseg_model.pretrained list`, hf-hub:ORG/REPO[@REV] or a .safetensors file")
    what.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where to run")
    what.add_argument("--backends", type=_name_list, default=["auto"],
                      help="comma-separated NAME[:PRECISION][:compile], NAME one of auto, tensorrt, torch, "
                           "onnxruntime (e.g. 'auto,torch:fp32,torch:fp16:compile')")
    what.add_argument("--categories", type=_int_list, default=[1, 5, 10, 20], help="values of K")
    what.add_argument("--sizes", type=_int_list, default=[224, 352], help="input sizes in pixels")
    what.add_argument("--compare", type=_name_list, default=["clipseg", "naive"],
                      help="comparisons to run: clipseg, naive (or 'none')")
    what.add_argument("--clipseg-precision", type=_name_list, default=["fp32"],
                      help="precisions to run clipseg at (fp16/bf16 autocast on CUDA)")
    what.add_argument("--clipseg-config", type=json.loads, default=None,
                      help="CLIPSegConfig keyword overrides as JSON (default: ViT-B/16 with the refined decoder)")
    what.add_argument("--max-categories", type=int, default=DEFAULT_MAX_CATEGORIES,
                      help="Segmenter max_categories (engines, slots)")
    what.add_argument("--frame", type=_frame_size, default=(480, 640), help="camera frame HxW for segment()")
    what.add_argument("--cache-dir", default=None, help="engine cache directory (default: the Segmenter's)")
    timing = parser.add_argument_group("timing")
    timing.add_argument("--warmup", type=int, default=3, help="untimed runs before each measurement")
    timing.add_argument("--iters", type=int, default=20, help="timed runs per measurement")
    timing.add_argument("--seed", type=int, default=0)
    out = parser.add_argument_group("output")
    out.add_argument("--json", type=Path, default=None, help="write the rows as a JSON list here")
    out.add_argument("--plot", type=Path, default=None, help="write a PNG plot of latency against K here")
    out.add_argument("--markdown", type=Path, default=None, help="also write the table and summary here")
    return parser


class MemoryMeter:
    """Peak memory of one measurement: CUDA allocator peak, or the process's peak RSS on the CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "rss_peak"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:  # Linux: writing 5 resets VmHWM, the peak resident set, to the current RSS
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self.kind = "rss_peak_since_start"

    def peak_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / MEBIBYTE
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        self.kind = "rss_peak_since_start"
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def time_ms(fn: Callable[[], object], warmup: int, iters: int, device: torch.device) -> list[float]:
    """Wall-clock milliseconds of ``iters`` calls of ``fn`` (after ``warmup`` calls), GPU work included."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - start))
    return times


def _stats(model_ms: list[float], segment_ms: list[float]) -> dict[str, float]:
    """p50/p95 latency and FPS (at p50) of the model alone and of segment()."""
    out = {}
    for prefix, fps_key, times in (("latency", "fps", model_ms), ("segment", "segment_fps", segment_ms)):
        p50 = statistics.median(times)
        out.update({f"{prefix}_ms_p50": round(p50, 3), f"{prefix}_ms_p95": round(float(np.percentile(times, 95)), 3),
                    fps_key: round(1000 / p50, 2)})
    return out


class ClipSegRunner:
    """transformers' CLIPSeg (ViT-B/16, refined decoder, random weights), run as its users run it."""

    def __init__(self, device: torch.device, precision: str, tokenizer: Callable[[list[str]], torch.Tensor],
                 config_overrides: dict | None = None):
        from transformers import CLIPSegConfig, CLIPSegForImageSegmentation

        values = {"vision_config": {"patch_size": 16}, "use_complex_transposed_convolution": True,
                  **(config_overrides or {})}
        config = CLIPSegConfig(**values)
        self.model = CLIPSegForImageSegmentation(config).eval().to(device)
        self.device = device
        self.precision = precision
        self.tokenizer = tokenizer

    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def logits(self, images: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """(1, 3, S, S) images and (K, L) prompts -> (1, K, S, S): one image-encoder pass per prompt."""
        k = input_ids.shape[0]
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision, torch.float32)
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.precision != "fp32"):
            out = self.model(input_ids=input_ids, pixel_values=images.expand(k, -1, -1, -1)).logits
        return out.float().reshape(1, k, *images.shape[-2:])

    @torch.no_grad()
    def segment(self, rgb: np.ndarray, input_ids: torch.Tensor, size: int) -> np.ndarray:
        # CLIPSeg's processor normalises with the ImageNet statistics.
        logits = self.logits(image_to_tensor(rgb, IMAGENET_MEAN, IMAGENET_STD, size, self.device), input_ids)
        probs = torch.sigmoid(F.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False)[0])
        return (probs > 0.5).cpu().numpy()


def _labels(k: int) -> list[str]:
    return [f"category {i}" for i in range(k)]


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (from /proc/cpuinfo where there is one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _base_row(impl: str, backend: str, precision: str, device: torch.device, size: int, k: int,
              args: argparse.Namespace) -> dict:
    return {"impl": impl, "backend": backend, "precision": precision, "device": device.type,
            "device_name": device_name(device), "size": size, "categories": k,
            "frame": f"{args.frame[0]}x{args.frame[1]}",
            "warmup": args.warmup, "iters": args.iters, "threads": torch.get_num_threads(),
            "torch": torch.__version__}


def measure_synseg(seg: Segmenter, spec_text: str, naive: bool, args: argparse.Namespace,
                   frame: np.ndarray, meter: MemoryMeter, params: int) -> list[dict]:
    """Rows for one Segmenter (one backend and size): impl synseg, and naive if asked, for every K."""
    rows = []
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randn(1, 3, seg.input_size, seg.input_size, generator=g).to(seg.device)
    for k in args.categories:
        labels = _labels(k)
        seg.set_vocabulary(labels)
        text = seg.model.encode_text(labels).to(seg.device)
        impls = [("synseg", lambda: seg.logits(images, text), lambda: seg.segment(frame))]
        if naive:
            def naive_model() -> torch.Tensor:
                return seg.logits(images, seg.model.encode_text(labels).to(seg.device))

            def naive_segment() -> object:
                seg.set_vocabulary(labels)
                return seg.segment(frame)
            impls.append(("naive", naive_model, naive_segment))
        for impl, model_fn, segment_fn in impls:
            meter.reset()
            model_ms = time_ms(model_fn, args.warmup, args.iters, seg.device)
            segment_ms = time_ms(segment_fn, args.warmup, args.iters, seg.device)
            row = _base_row(impl, seg.backend_name, seg.backend.precision, seg.device, seg.input_size, k, args)
            row.update(_stats(model_ms, segment_ms), requested=spec_text, backend_detail=seg.backend.describe(),
                       peak_mem_mb=round(meter.peak_mb(), 1), peak_mem_kind=meter.kind, params=params)
            rows.append(row)
    return rows


def measure_clipseg(runner: ClipSegRunner, args: argparse.Namespace, frame: np.ndarray,
                    meter: MemoryMeter) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(args.seed)
    images = {size: torch.randn(1, 3, size, size, generator=g).to(runner.device) for size in args.sizes}
    jobs = [(size, k) for size in args.sizes for k in args.categories]
    for size, k in tqdm(jobs, desc=f"clipseg {runner.precision}", unit="config"):
        ids = runner.tokenizer([PROMPT.format(label) for label in _labels(k)]).to(runner.device)
        meter.reset()
        model_ms = time_ms(lambda: runner.logits(images[size], ids), args.warmup, args.iters, runner.device)
        segment_ms = time_ms(lambda: runner.segment(frame, ids, size), args.warmup, args.iters, runner.device)
        row = _base_row("clipseg", "torch", runner.precision, runner.device, size, k, args)
        row.update(_stats(model_ms, segment_ms), requested="hf-transformers",
                   backend_detail=f"transformers eager ({runner.precision})",
                   peak_mem_mb=round(meter.peak_mb(), 1), peak_mem_kind=meter.kind, params=runner.params())
        rows.append(row)
    return rows


def _release_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:  # hand freed heap pages back so the next rows' RSS peaks are their own
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def run(args: argparse.Namespace) -> tuple[list[dict], list[str]]:
    """All rows of the benchmark, and notes on what was skipped and why."""
    device = resolve_device(args.device)
    torch.manual_seed(args.seed)
    frame = np.random.default_rng(args.seed).integers(0, 256, (*args.frame, 3), dtype=np.uint8)
    meter = MemoryMeter(device)
    model = build_model(args.model).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    tokenizer = get_tokenizer(model.config)
    rows: list[dict] = []
    notes: list[str] = []
    specs = [BackendSpec.parse(s) for s in args.backends]
    jobs = [(size, i, spec) for size in args.sizes for i, spec in enumerate(specs)]
    for size, i, spec in tqdm(jobs, desc="synseg", unit="config"):
        spec_text = args.backends[i]
        try:
            seg = Segmenter(model, device=device, backend=spec.name, precision=spec.precision, compile=spec.compile,
                            max_categories=args.max_categories, input_size=size, cache_dir=args.cache_dir)
        except (BackendUnavailable, ValueError) as exc:
            notes.append(f"skipped backend {spec_text} at {size} px: {exc}")
            log.warning(notes[-1])
            continue
        rows += measure_synseg(seg, spec_text, "naive" in args.compare and i == 0, args, frame, meter, params)
        del seg
        _release_memory()
    del model
    _release_memory()
    if "clipseg" in args.compare:
        for precision in args.clipseg_precision:
            if device.type == "cpu" and precision == "fp16":
                notes.append("skipped clipseg fp16 on the CPU")
                continue
            runner = ClipSegRunner(device, precision, tokenizer, args.clipseg_config)
            rows += measure_clipseg(runner, args, frame, meter)
            del runner
            _release_memory()
    return rows, notes


def _label(row: dict) -> str:
    extra = ":compile" if "compile" in row.get("backend_detail", "") else ""
    return f"{row['impl']} / {row['backend']} {row['precision']}{extra}"


def markdown_table(rows: list[dict]) -> str:
    head = ("| impl | backend | precision | device | size | K | model p50 ms | model p95 ms | model FPS | "
            "segment p50 ms | segment p95 ms | segment FPS | peak MB | params M |")
    lines = [head, "|" + " --- |" * 4 + " ---: |" * 10]
    for r in rows:
        lines.append(f"| {r['impl']} | {r['backend']} | {r['precision']} | {r['device']} | {r['size']} | "
                     f"{r['categories']} | {r['latency_ms_p50']:.2f} | {r['latency_ms_p95']:.2f} | {r['fps']:.2f} | "
                     f"{r['segment_ms_p50']:.2f} | {r['segment_ms_p95']:.2f} | {r['segment_fps']:.2f} | "
                     f"{r['peak_mem_mb']:.0f} | {r['params'] / 1e6:.1f} |")
    return "\n".join(lines)


def summary_lines(rows: list[dict]) -> list[str]:
    """Speed-ups over clipseg at equal size and K, and each SynSeg backend's latency(K max)/latency(K min)."""
    lines = []
    by_key = {(r["impl"], _label(r), r["size"], r["categories"]): r for r in rows}
    clip = {(r["size"], r["categories"]): r for r in rows if r["impl"] == "clipseg" and r["precision"] == "fp32"}
    for (impl, label, size, k), r in sorted(by_key.items(), key=lambda kv: (kv[0][2], kv[0][3], kv[0][1])):
        ref = clip.get((size, k))
        if impl == "synseg" and ref:
            lines.append(f"{label} vs clipseg fp32 at {size} px, K={k}: "
                         f"{ref['latency_ms_p50'] / r['latency_ms_p50']:.1f}x (model), "
                         f"{ref['segment_ms_p50'] / r['segment_ms_p50']:.1f}x (segment)")
    for label in sorted({_label(r) for r in rows if r["impl"] == "synseg"}):
        for size in sorted({r["size"] for r in rows}):
            ks = sorted(r["categories"] for r in rows if _label(r) == label and r["size"] == size)
            if len(ks) > 1:
                lo, hi = by_key[("synseg", label, size, ks[0])], by_key[("synseg", label, size, ks[-1])]
                lines.append(f"{label} at {size} px: latency(K={ks[-1]}) / latency(K={ks[0]}) = "
                             f"{hi['latency_ms_p50'] / lo['latency_ms_p50']:.2f} (model)")
    return lines


def plot(rows: list[dict], path: Path) -> None:
    """Latency (p50, log scale) against K: one panel per size, one line per implementation and backend;
    solid = model alone, dashed = full segment()."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["size"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.5), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for label in sorted({_label(r) for r in rows}):
            pts = sorted((r["categories"], r["latency_ms_p50"], r["segment_ms_p50"]) for r in rows
                         if r["size"] == size and _label(r) == label)
            if not pts:
                continue
            ks, model_ms, segment_ms = zip(*pts)
            (line,) = ax.plot(ks, model_ms, marker="o", label=label)
            ax.plot(ks, segment_ms, marker=".", linestyle="--", color=line.get_color())
        ax.set(title=f"{size} px ({rows[0]['device_name']})", xlabel="categories K",
               ylabel="latency p50 [ms] (solid: model, dashed: segment)", yscale="log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = get_args_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but CUDA is not available")
    unknown = set(args.compare) - {"clipseg", "naive"}
    if unknown:
        parser.error(f"unknown --compare item(s): {', '.join(sorted(unknown))}")
    if max(args.categories) > args.max_categories:
        parser.error(f"--categories up to {max(args.categories)} exceed --max-categories {args.max_categories}")
    try:
        [BackendSpec.parse(s) for s in args.backends]
    except ValueError as exc:
        parser.error(str(exc))
    rows, notes = run(args)
    if not rows:
        parser.error("nothing was measured: " + "; ".join(notes))
    first = rows[0]
    header = (f"{args.model}, {first['device_name']} ({first['threads']} CPU threads), torch {torch.__version__}, "
              f"frame {first['frame']}, warmup {args.warmup}, iters {args.iters}")
    text = "\n".join([header, "", markdown_table(rows), "", *summary_lines(rows), *notes])
    print("\n" + text)
    if args.markdown:
        args.markdown.write_text(text + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    if args.plot:
        plot(rows, args.plot)
    return rows


if __name__ == "__main__":
    main()
