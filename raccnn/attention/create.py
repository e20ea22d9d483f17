"""``build_attention``: one name -> block map, the only list of attention types.

Every block follows its paper; ``identity_init=True`` (the default) builds a form that returns
exactly its input at initialisation while its last learnable layer still receives gradient, so
the block can be inserted into a pretrained trunk without changing its features. Each block's
docstring gives its equation and what is zero at init.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from .bam import BAM
from .cbam import cbam_block
from .danet import DANet
from .eca import eca_block
from .gather_excite import gather_excite
from .global_context import gc_block
from .nonlocal_block import NonLocal
from .parsenet import ParseNetContext
from .sagan import SelfAttention
from .sasa import SASA
from .se import se_block


def _none(channels: int, identity_init: bool = True) -> nn.Module:
    return nn.Identity()


def _ge_theta(channels: int, identity_init: bool = True, **kwargs) -> nn.Module:
    return gather_excite(channels, param=True, identity_init=identity_init, **kwargs)


BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "none": _none,
    "se": se_block,
    "cbam": cbam_block,
    "nonlocal": NonLocal,
    "ge": gather_excite,
    "ge_theta": _ge_theta,
    "eca": eca_block,
    "gc": gc_block,
    "danet": DANet,
    "sagan": SelfAttention,
    "bam": BAM,
    "parsenet": ParseNetContext,
    "sasa": SASA,
}
ATTENTION_TYPES = tuple(BUILDERS)


def build_attention(name: str, channels: int, identity_init: bool = True, **kwargs) -> nn.Module:
    """Build the attention block ``name`` for ``channels`` channels; ``kwargs`` go to the block
    (e.g. ``reduction=8`` for se, ``extent=4`` or ``param=True`` for ge, ``sub_sample=False`` for
    nonlocal)."""
    if name not in BUILDERS:
        raise ValueError(f"unknown attention type {name!r}; valid types: {', '.join(ATTENTION_TYPES)}")
    try:
        return BUILDERS[name](channels, identity_init=identity_init, **kwargs)
    except TypeError as e:
        raise ValueError(f"attention type {name!r}: bad keyword arguments {sorted(kwargs)} ({e})") from e
