"""The ``none`` attention type: y = x, no parameters."""
from __future__ import annotations

from torch import nn


def no_attention(channels: int, identity_init: bool = True) -> nn.Module:
    """y = x (``channels`` and ``identity_init`` are accepted for a uniform signature)."""
    return nn.Identity()
