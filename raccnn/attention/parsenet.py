"""ParseNet global context (Liu et al., 2015).

timm has no ParseNet block. The paper concatenates the L2-normalised local features with the
L2-normalised, tiled global average, each multiplied by a learned per-channel scale; to keep the
block C → C, a 1×1 conv projects the 2C channels back to C and the result is added to the input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .gate import zero_


class ParseNetContext(nn.Module):
    """y = x + W [s_l ⊙ x̂ ; s_g ⊙ ĝ] + b,  x̂ᵢ = xᵢ / ‖xᵢ‖₂ (over channels, at each position i),
    ĝ = GAP(x) / ‖GAP(x)‖₂ tiled to H×W; s_l, s_g ∈ R^C learned, initialised to ``init_scale``.

    identity_init=True: W and b are zero, so y = x at init; W and b receive gradient at init
    (s_l, s_g do not until W moves). identity_init=False: default init of W and b.
    """

    def __init__(self, channels: int, init_scale: float = 10.0, identity_init: bool = True):
        super().__init__()
        self.local_scale = nn.Parameter(torch.full((channels,), float(init_scale)))
        self.global_scale = nn.Parameter(torch.full((channels,), float(init_scale)))
        self.proj = nn.Conv2d(2 * channels, channels, 1)
        if identity_init:
            zero_(self.proj)

    def forward(self, x: Tensor) -> Tensor:
        local = F.normalize(x, dim=1) * self.local_scale.view(1, -1, 1, 1)
        glob = F.normalize(x.mean(dim=(2, 3), keepdim=True), dim=1) * self.global_scale.view(1, -1, 1, 1)
        context = torch.cat((local, glob.expand_as(local)), dim=1)
        return x + self.proj(context)
