"""SynSeg model: numerical equivalence with Hugging Face CLIPSeg, frozen CLIP, encoder reuse, size."""
from __future__ import annotations

import copy

import pytest
import torch

from synseg_model import SynSeg, convert_hf_clipseg, create_model

transformers = pytest.importorskip("transformers")


def _hf_and_ours(refined: bool):
    # Refined is CLIPSeg's rd64-refined: ViT-B/16 (the default config is B/32, whose upsampler would be 64x).
    vision = {"patch_size": 16} if refined else {}
    cfg = transformers.CLIPSegConfig(use_complex_transposed_convolution=refined, vision_config=vision)
    torch.manual_seed(0)
    hf = transformers.CLIPSegForImageSegmentation(cfg).eval()
    config, state = convert_hf_clipseg(hf.state_dict(), cfg.to_dict())
    ours = SynSeg(config).eval()
    missing, unexpected = ours.load_state_dict(state, strict=False)
    assert unexpected == [] and all(k.startswith("projector.") for k in missing)
    return hf, ours


@pytest.mark.slow
@pytest.mark.parametrize("refined", [False, True], ids=["uni", "refined"])
def test_logits_equal_hf_clipseg(refined):
    """Same logits as transformers' CLIPSeg: layer indices, pos-embed resizing, FiLM, decoder, upsampler.

    Tolerance: |ours - theirs| <= 1e-5 * max|theirs| + 1e-4 (float32 rounding; random weights give logits
    in the thousands with the refined upsampler). Measured: ~2e-6 relative.
    """
    hf, ours = _hf_and_ours(refined)
    prompts = ["a photo of a cat.", "a dog", "traffic light"]
    tokens = ours._tokenizer(prompts)
    for size in (224, 352):  # 352 resizes the 14x14 position grid to 22x22
        image = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            theirs = hf(input_ids=tokens, pixel_values=image.expand(len(prompts), -1, -1, -1)).logits
            mine = ours(image, ours.encode_prompts(prompts))[0]
        tol = 1e-5 * theirs.abs().max().item() + 1e-4
        assert mine.shape == theirs.shape
        assert (mine - theirs).abs().max().item() <= tol


def test_forward_shapes_and_per_image_text(tiny_model):
    images = torch.randn(2, 3, 64, 64)
    text = tiny_model.encode_text(["circle", "grass", "water"])
    assert text.shape == (3, tiny_model.text_dim)
    logits = tiny_model(images, text)
    assert logits.shape == (2, 3, 64, 64)
    per_image = tiny_model(images, text.expand(2, -1, -1))
    torch.testing.assert_close(per_image, logits)
    out = tiny_model(images, text, return_synergy=True)
    assert out.fg.shape == out.bg.shape == (2, 3, tiny_model.text_dim)
    # An input not divisible by the patch size still gives logits at input resolution.
    assert tiny_model(torch.randn(1, 3, 70, 61), text).shape == (1, 3, 70, 61)


def test_encode_text_is_raw_template_mean(tiny_model):
    templates = ["a photo of a {}.", "a {} in a video game."]
    raw = tiny_model.encode_prompts([t.format("star") for t in templates])
    torch.testing.assert_close(tiny_model.encode_text(["star"], templates)[0], raw.mean(0))
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2))  # not normalised


def test_only_heads_train_and_clip_stays_eval(tiny_model):
    model = copy.deepcopy(tiny_model).train()
    assert not model.clip.training and model.decoder.training
    text = model.encode_text(["a", "b"])
    out = model(torch.randn(2, 3, 64, 64), text, return_synergy=True)
    (out.logits.mean() + out.fg.sum() * 1e-3).backward()
    for name, p in model.named_parameters():
        if name.startswith("clip."):
            assert p.grad is None, name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.decoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.projector.parameters())
    trainable = {id(p) for p in model.trainable_parameters()}
    assert trainable == {id(p) for p in model.parameters() if p.requires_grad}


@pytest.mark.parametrize("k", [1, 10])
def test_image_encoder_runs_once_per_image(tiny_model, k):
    calls = []
    hook = tiny_model.clip.visual.conv1.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        tiny_model(torch.randn(1, 3, 64, 64), tiny_model.encode_text([f"c{i}" for i in range(k)]))
    finally:
        hook.remove()
    assert calls == [1]


@pytest.mark.slow
def test_vit_b16_parameter_count():
    model = create_model("synseg-vit-b-16", clip_pretrained=None)
    total = sum(p.numel() for p in model.parameters())
    assert abs(total - 151e6) <= 1e6, total


def test_resnet_clip_tower():
    """CLIP's ResNet towers feed the same decoder: stages on one token grid, widths per stage, any input size."""
    from synseg_model.backends import SegmentationModule, export_program
    from synseg_model.clip import activation_widths, token_stride, visual_activations

    torch.manual_seed(0)
    tiny = create_model("synseg-tiny")
    rn_clip = {**tiny.config.clip_config, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8}}
    model = SynSeg(tiny.config.replace(clip_config=rn_clip, extract_layers=(1, 2, 3))).eval()
    visual = model.clip.visual
    assert activation_widths(visual, (1, 2, 3)) == [64, 128, 256] and token_stride(visual, (1, 2, 3)) == 8
    images = torch.randn(2, 3, 64, 64)
    acts = visual_activations(visual, images, (1, 2, 3))
    assert [tuple(a.shape) for a in acts] == [(2, 65, 64), (2, 65, 128), (2, 65, 256)]
    torch.testing.assert_close(acts[0][:, 0], acts[0][:, 1:].mean(1))  # the mean token stands in for CLS
    text = model.encode_text(["circle", "grass"])
    assert model(images, text).shape == (2, 2, 64, 64)
    assert model(torch.randn(1, 3, 70, 90), text).shape == (1, 2, 70, 90)
    with pytest.raises(ValueError, match="exceed the 4 layers"):
        SynSeg(model.config.replace(extract_layers=(2, 4)))
    program = export_program(SegmentationModule(model, 64), max_categories=4)
    torch.testing.assert_close(program.module()(images[:1], text), model(images[:1], text))
