"""What is not in an image, for the L_outside term (``training.config.OutsideLoss``): nouns that no caption of
the training data names, and frames that hold nothing of the training world (flat colours, noise, gradients).

A web-caption corpus names thousands of things, so L_absent's labels from other captions already cover much of
what a robot may ask for; a closed world (the shapes world) names a few dozen words, and nothing in it teaches a
map to stay off for a word it never met or on a frame of nothing. These two sources are sure negatives: no
caption names the words, and the frames are drawn, not photographed.
"""

from __future__ import annotations

from pathlib import Path

import torch


def read_words(path: str | Path) -> list[str]:
    """One noun per line; blank lines and lines starting with '#' are skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def random_frames(count: int, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` (size, size, 3) uint8 frames, in turn a flat colour, Gaussian noise around a colour (standard
    deviation 5-60) and a linear gradient between two colours in a random direction; every colour uniform."""
    frames = []
    for i in range(count):
        colour = torch.randint(0, 256, (3,), generator=generator).float()
        kind = i % 3
        if kind == 0:
            frame = colour.expand(size, size, 3)
        elif kind == 1:
            spread = 5 + 55 * torch.rand((), generator=generator)
            frame = colour + spread * torch.randn(size, size, 3, generator=generator)
        else:
            other = torch.randint(0, 256, (3,), generator=generator).float()
            angle = 2 * torch.pi * torch.rand((), generator=generator)
            ramp = torch.linspace(0, 1, size)
            t = (torch.cos(angle) * ramp[None, :] + torch.sin(angle) * ramp[:, None])
            t = (t - t.min()) / (t.max() - t.min()).clamp(min=1e-6)
            frame = colour + (other - colour) * t[..., None]
        frames.append(frame.clamp(0, 255).round().to(torch.uint8))
    return torch.stack(frames)
