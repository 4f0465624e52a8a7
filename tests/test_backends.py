"""Inference backends: equivalence with eager fp32, dynamic K, the engine cache, and how ``auto`` chooses."""
from __future__ import annotations

import copy
import dataclasses
import logging

import numpy as np
import pytest
import torch

from synseg_model import Segmenter
from synseg_model import backends as B
from synseg_model.engine_cache import EngineCache, EngineKey, weights_hash

CPU = torch.device("cpu")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Tolerances against eager fp32 (sigmoid probabilities of the tiny random model): masks at 0.5 agree on
# >= 99% of pixels for every backend (the bar); the largest probability difference stays under
# 1e-4 for fp32 paths (rounding only) and 0.1 for 16-bit paths. The measured maxima are printed (-s).
MIN_AGREEMENT = 0.99
MAX_DIFF = {"fp32": 1e-4, "bf16": 0.1, "fp16": 0.1}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One engine cache for the module, so each ONNX graph is exported once."""
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="module")
def module(tiny_model):
    return B.SegmentationModule(tiny_model, tiny_model.config.image_size).eval()


def _random_inputs(module, k: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    size = module.input_size
    return torch.randn(1, 3, size, size, generator=g), torch.randn(k, module.text_dim, generator=g)


@pytest.mark.parametrize("size", [64, 48], ids=["native", "resized-pos-embed"])
def test_segmentation_module_equals_model_forward(tiny_model, size):
    module = B.SegmentationModule(tiny_model, size).eval()
    images, text = _random_inputs(module, 3)
    with torch.no_grad():
        torch.testing.assert_close(module(images, text), tiny_model(images, text))
    names = {n for n, _ in module.named_parameters()}
    assert not any("token_embedding" in n or n.startswith("transformer.resblocks") for n in names)


def test_torch_export_with_dynamic_categories(module):
    """The exact module the tensorrt backend compiles exports with K dynamic; K beyond the limit is refused."""
    program = B.export_program(module, max_categories=8)
    exported = program.module()
    for k in (1, 3, 8):
        images, text = _random_inputs(module, k, seed=k)
        with torch.no_grad():
            torch.testing.assert_close(exported(images, text), module(images, text), rtol=1e-4, atol=1e-4)
    with pytest.raises(AssertionError, match=r"text.size\(\)\[0\] <= 8"):  # torch.export's shape guard
        exported(*_random_inputs(module, 9))


@pytest.mark.gpu
def test_tensorrt_compile(module):
    torch_tensorrt, why = B.tensorrt_status()
    if torch_tensorrt is None:
        pytest.skip(f"torch_tensorrt unavailable: {why}")
    if not torch.cuda.is_available():
        pytest.skip("torch_tensorrt is installed but there is no CUDA device")
    cuda_module = copy.deepcopy(module).cuda()
    compiled = B.compile_tensorrt(torch_tensorrt, cuda_module, 8, "fp16", torch.device("cuda"))
    for k in (1, 8):
        images, text = (t.cuda() for t in _random_inputs(module, k))
        with torch.no_grad():
            probs, ref = torch.sigmoid(compiled(images, text).float()), torch.sigmoid(cuda_module(images, text))
        assert ((probs > 0.5) == (ref > 0.5)).float().mean().item() >= MIN_AGREEMENT


@pytest.mark.parametrize("name, kwargs", [
    ("torch", {"precision": "fp32"}),
    ("torch", {"precision": "bf16"}),
    ("torch", {"precision": "fp32", "static_categories": True}),   # the CUDA-graph K slots, without graphs
    ("onnxruntime", {}),
], ids=["torch-fp32", "torch-bf16", "torch-slots", "onnxruntime"])
@pytest.mark.parametrize("k", [1, 5])
def test_cpu_backends_match_eager_fp32(module, cache_dir, name, kwargs, k):
    if name == "torch":
        backend = B.TorchBackend(module, CPU, max_categories=8, **kwargs)
    else:
        backend = B.OnnxRuntimeBackend(module, 8, EngineCache(cache_dir), B.module_hash(module))
    diff, agree = B.agreement_with_eager(backend, module, k, seed=k)
    print(f"{backend.describe()} K={k}: max prob diff {diff:.2e}, mask agreement {100 * agree:.3f}%")
    assert agree >= MIN_AGREEMENT
    assert diff <= MAX_DIFF[backend.precision]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_torch_backend_matches_eager_fp32(module, precision):
    cuda_module = copy.deepcopy(module).cuda()
    backend = B.TorchBackend(cuda_module, torch.device("cuda"), precision, cuda_graphs=True, max_categories=32)
    tolerance = 1e-2 if precision == "fp32" else MAX_DIFF[precision]   # fp32: cuDNN may convolve in TF32
    for seed, k in enumerate((1, 5, 20, 6)):   # K=6 replays the K=5 slot's graph on new inputs
        diff, agree = B.agreement_with_eager(backend, cuda_module, k, seed=seed)
        print(f"{backend.describe()} K={k}: max prob diff {diff:.2e}, mask agreement {100 * agree:.3f}%")
        assert agree >= MIN_AGREEMENT
        assert diff <= tolerance
    assert backend.cuda_graphs, "CUDA graph capture fell back to eager"


def test_category_slots():
    assert B.category_buckets(32) == [1, 2, 4, 8, 16, 32]
    assert B.category_buckets(10) == [1, 2, 4, 8, 10]
    assert B.category_buckets(1) == [1]
    text = torch.randn(5, 3)
    padded = B.pad_categories(text, B.category_buckets(10))
    assert padded.shape == (8, 3) and torch.equal(padded[:5], text) and not padded[5:].any()
    with pytest.raises(ValueError, match="exceed"):
        B.pad_categories(torch.randn(11, 3), B.category_buckets(10))


def test_onnx_is_exported_once_and_serves_every_k(module, tmp_path, monkeypatch):
    cache = EngineCache(tmp_path)
    backend = B.OnnxRuntimeBackend(module, 6, cache, B.module_hash(module))
    for k in (1, 6):
        assert backend(*_random_inputs(module, k)).shape == (1, k, module.input_size, module.input_size)
    assert len(list(tmp_path.glob("*.onnx"))) == 1

    def no_export(*args, **kwargs):
        raise AssertionError("re-exported although the graph is cached")
    monkeypatch.setattr(B, "export_onnx", no_export)
    again = B.OnnxRuntimeBackend(module, 6, cache, B.module_hash(module))
    assert again.path == backend.path


def test_engine_key_changes_with_every_field():
    base = EngineKey("tensorrt", "abc", 352, 32, "fp16", "NVIDIA H100 80GB HBM3",
                     (("tensorrt", "10.9"), ("torch_tensorrt", "2.11"), ("torch", "2.11")))
    changes = {"kind": "onnxruntime", "weights_hash": "abd", "input_size": 224, "max_categories": 20,
               "precision": "fp32", "device_name": "NVIDIA RTX 4090",
               "versions": (("tensorrt", "10.10"), ("torch_tensorrt", "2.11"), ("torch", "2.11"))}
    assert set(changes) == {f.name for f in dataclasses.fields(EngineKey)}
    digests = {base.digest()}
    for field, value in changes.items():
        changed = dataclasses.replace(base, **{field: value})
        assert changed.digest() != base.digest(), field
        digests.add(changed.digest())
    assert len(digests) == len(changes) + 1
    torch_tensorrt_bump = dataclasses.replace(base, versions=(("tensorrt", "10.9"), ("torch_tensorrt", "2.12"),
                                                              ("torch", "2.11")))
    assert torch_tensorrt_bump.digest() != base.digest()


def test_weights_hash_follows_the_weights(tiny_model):
    other = copy.deepcopy(tiny_model)
    assert weights_hash(other) == weights_hash(tiny_model)
    with torch.no_grad():
        other.decoder.film_mul.weight[0, 0] += 1e-3
    assert weights_hash(other) != weights_hash(tiny_model)
    assert weights_hash(tiny_model, extra="size=64") != weights_hash(tiny_model, extra="size=352")


def test_auto_on_cpu_logs_choice_and_fallback(tiny_model, cache_dir, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="synseg_model.backends")
    seg = Segmenter(tiny_model, device="cpu", max_categories=8, cache_dir=cache_dir)
    assert seg.backend_name == B.CPU_BACKEND
    assert f"backend auto: chose {B.CPU_BACKEND}" in caplog.text and "cpu device" in caplog.text

    def unavailable(*args, **kwargs):
        raise B.BackendUnavailable("onnxruntime is not installed (simulated)")
    monkeypatch.setattr(B, "OnnxRuntimeBackend", unavailable)
    caplog.clear()
    seg = Segmenter(tiny_model, device="cpu", max_categories=8, cache_dir=cache_dir)
    assert seg.backend_name == "torch"
    assert "onnxruntime did not start" in caplog.text and "simulated" in caplog.text
    assert "backend auto: chose torch" in caplog.text


def test_auto_candidates_on_cuda():
    cuda = torch.device("cuda")
    first, why = B.auto_candidates(cuda, (True, "torch_tensorrt 2.11 is installed"))[0]
    assert first == "tensorrt" and "torch_tensorrt 2.11" in why
    only = B.auto_candidates(cuda, (False, "torch_tensorrt is not importable (ImportError)"))
    assert [n for n, _ in only] == ["torch"] and "not importable" in only[0][1]
    assert B.auto_candidates(cuda, (True, "installed"), compile=True)[0][0] == "torch"
    assert B.auto_candidates(CPU, (False, "not on CUDA"))[0][0] == B.CPU_BACKEND


def test_explicit_backends_refuse_what_they_cannot_do(tiny_model, module, tmp_path):
    with pytest.raises(ValueError, match="unknown backend"):
        Segmenter(tiny_model, device="cpu", backend="tflite")
    with pytest.raises(ValueError, match="unknown precision"):
        Segmenter(tiny_model, device="cpu", backend="torch", precision="int4")
    with pytest.raises(B.BackendUnavailable, match="fp16"):
        Segmenter(tiny_model, device="cpu", backend="torch", precision="fp16")
    with pytest.raises(B.BackendUnavailable, match="CUDA"):
        B.TensorRTBackend(module, CPU, 8, EngineCache(tmp_path), "hash")


def test_segmenters_on_different_backends_agree(tiny_model, cache_dir):
    rgb = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    outs = []
    for backend in ("torch", "onnxruntime"):
        seg = Segmenter(tiny_model, device="cpu", backend=backend, max_categories=8, cache_dir=cache_dir)
        seg.set_vocabulary(["circle", "grass", "water"])
        outs.append(seg.segment(rgb))
    assert (outs[0].masks == outs[1].masks).mean() >= MIN_AGREEMENT
    np.testing.assert_allclose(outs[0].probabilities, outs[1].probabilities, atol=1e-4)


def test_prebuilt_engines_are_what_the_segmenter_loads(tiny_model, tmp_path, monkeypatch, capsys):
    from synseg_model import build_engines, load_checkpoint, save_checkpoint

    checkpoint = save_checkpoint(tiny_model, tmp_path / "tiny.safetensors")
    engines = tmp_path / "engines"
    assert build_engines.main(["--checkpoint", str(checkpoint), "--backend", "onnxruntime", "--sizes", "64",
                               "--max-categories", "4", "--cache-dir", str(engines)]) == 0
    assert "ok" in capsys.readouterr().out and len(list(engines.glob("*.onnx"))) == 1

    def no_export(*args, **kwargs):
        raise AssertionError("the Segmenter re-exported a prebuilt graph")
    monkeypatch.setattr(B, "export_onnx", no_export)
    seg = Segmenter(load_checkpoint(checkpoint), device="cpu", backend="onnxruntime", max_categories=4,
                    cache_dir=engines)
    assert seg.backend.path.parent == engines


@pytest.mark.skipif(torch.cuda.is_available() and B.tensorrt_status()[0] is not None,
                    reason="checks the message given where TensorRT is missing")
def test_prebuilding_tensorrt_without_it_says_why(tmp_path):
    with pytest.raises(SystemExit, match="cannot build tensorrt engines here: .*(CUDA|torch_tensorrt)"):
        from synseg_model import build_engines
        build_engines.main(["--model", "synseg-tiny", "--sizes", "64", "--cache-dir", str(tmp_path)])
