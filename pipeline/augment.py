"""DiffAugment for clips (arXiv 2006.10738): differentiable colour, translation and cutout.

Applied to every clip the discriminators see, real and fake alike, so D can't memorise a
small dataset and G still gets gradients through the augmentation. One draw per clip is
used for all of its frames: a per-frame jitter would itself look like motion. There is no
flip, ever: a horizontal flip turns "left to right" into "right to left".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def parse(policy: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in policy.split(",") if p.strip())
    bad = [p for p in names if p not in POLICIES]
    if bad:
        raise ValueError(f"unknown augmentation {bad[0]!r}; choose from {', '.join(POLICIES)}")
    return names


def _color(x: torch.Tensor) -> torch.Tensor:
    b = x.shape[0]
    r = lambda: torch.rand(b, 1, 1, 1, 1, device=x.device, dtype=x.dtype)  # noqa: E731  one draw per clip
    x = x + (r() - 0.5)  # brightness
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * (r() * 2) + mean  # saturation
    mean = x.mean((1, 2, 3, 4), keepdim=True)
    return (x - mean) * (r() + 0.5) + mean  # contrast


def _translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Shift each clip by up to ratio x its size, filling with zeros (one shift per clip)."""
    b, _, t, h, w = x.shape
    sy, sx = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-sy, sy + 1, (b,), device=x.device)
    dx = torch.randint(-sx, sx + 1, (b,), device=x.device)
    pad = F.pad(x, (sx, sx, sy, sy))  # B,C,T,H+2sy,W+2sx
    ys = (torch.arange(h, device=x.device)[None] + sy - dy[:, None])  # B,H
    xs = (torch.arange(w, device=x.device)[None] + sx - dx[:, None])  # B,W
    idx_b = torch.arange(b, device=x.device)[:, None, None]
    out = pad.permute(0, 3, 4, 1, 2)[idx_b, ys[:, :, None], xs[:, None, :]]  # B,H,W,C,T
    return out.permute(0, 3, 4, 1, 2)


def _cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    b, _, t, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=x.device)
    cx = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=x.device)
    yy = torch.arange(h, device=x.device)[None, :, None]
    xx = torch.arange(w, device=x.device)[None, None, :]
    keep = ~(((yy - cy).abs() < ch // 2 + 0.5) & ((xx - cx).abs() < cw // 2 + 0.5))  # B,H,W
    return x * keep[:, None, None].to(x.dtype)


def augment(x: torch.Tensor, policy: tuple[str, ...]) -> torch.Tensor:
    """(B,3,T,H,W) -> the same shape; draws from the global torch RNG (checkpointed)."""
    for p in policy:
        x = {"color": _color, "translation": _translation, "cutout": _cutout}[p](x)
    return x
