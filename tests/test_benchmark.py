"""The speed benchmark CLI: a one-iteration smoke run on tiny models writes the rows, table and plot."""
from __future__ import annotations

import json

import matplotlib.image
import pytest
import torch

from synseg_model import benchmark

REQUIRED = {"impl", "backend", "device", "size", "categories", "latency_ms_p50", "latency_ms_p95", "fps",
            "peak_mem_mb", "segment_ms_p50", "segment_ms_p95", "segment_fps", "params"}
# A CLIPSeg small enough for a smoke run; the benchmark's default is ViT-B/16.
TINY_CLIPSEG = {
    "projection_dim": 32, "extract_layers": [1, 2], "reduce_dim": 16, "decoder_num_attention_heads": 2,
    "decoder_intermediate_size": 32,
    "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
    "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "num_attention_heads": 2,
                      "patch_size": 16, "image_size": 64},
}


@pytest.mark.slow
def test_smoke_run_writes_json_table_and_plot(tmp_path, capsys):
    out_json, out_png, out_md = tmp_path / "bench.json", tmp_path / "bench.png", tmp_path / "bench.md"
    rows = benchmark.main([
        "--model", "synseg-tiny", "--device", "cpu", "--backends", "auto,torch", "--categories", "1,3",
        "--sizes", "64", "--compare", "clipseg,naive", "--clipseg-config", json.dumps(TINY_CLIPSEG),
        "--warmup", "0", "--iters", "1", "--frame", "48x64", "--max-categories", "4",
        "--cache-dir", str(tmp_path / "engines"),
        "--json", str(out_json), "--plot", str(out_png), "--markdown", str(out_md)])
    saved = json.loads(out_json.read_text())
    assert saved == rows
    assert {r["impl"] for r in saved} == {"synseg", "clipseg", "naive"}
    # synseg: 2 backends x 2 K; naive: first backend only x 2 K; clipseg: 2 K.
    assert len(saved) == 8
    for row in saved:
        assert REQUIRED <= set(row), REQUIRED - set(row)
        assert row["device"] == "cpu" and row["size"] == 64 and row["categories"] in (1, 3)
        assert 0 < row["latency_ms_p50"] <= row["latency_ms_p95"] and row["fps"] > 0
        assert row["peak_mem_mb"] > 0 and row["params"] > 0
    assert {r["backend"] for r in saved if r["impl"] == "synseg"} == {"onnxruntime", "torch"}
    table = capsys.readouterr().out
    assert table.count("| synseg |") == 4 and "vs clipseg" in table and "latency(K=3) / latency(K=1)" in table
    assert "| impl |" in out_md.read_text() and "synseg-tiny" in out_md.read_text().splitlines()[0]
    image = matplotlib.image.imread(out_png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_backend_specs():
    assert benchmark.BackendSpec.parse("torch:bf16:compile") == benchmark.BackendSpec("torch", "bf16", True)
    assert benchmark.BackendSpec.parse("auto") == benchmark.BackendSpec("auto")
    with pytest.raises(ValueError, match="NAME"):
        benchmark.BackendSpec.parse("torch:fp16:bf16")


@pytest.mark.parametrize("argv, message", [
    (["--categories", "1,0"], "positive"),
    (["--compare", "yolo"], "unknown --compare"),
    (["--categories", "40"], "exceed --max-categories"),
    (["--backends", "torch:a:b"], "bad backend spec"),
])
def test_bad_arguments_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--model", "synseg-tiny", *argv])
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where CUDA is missing")
def test_cuda_without_cuda_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        benchmark.main(["--model", "synseg-tiny", "--device", "cuda"])
    assert "CUDA is not available" in capsys.readouterr().err
