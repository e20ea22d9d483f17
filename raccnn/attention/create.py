"""``build_attention``: one name -> block map, the only list of attention types.

Every block follows its paper; ``identity_init=True`` (the default) builds a form that returns
exactly its input at initialisation while its last learnable layer still receives gradient, so
the block can be inserted into a pretrained trunk without changing its features. Each block's
docstring gives its equation and what is zero at init.
"""
from __future__ import annotations

from functools import partial
from typing import Callable

from torch import nn

from . import cbam, eca, gather_excite as ge, sasa
from .args import checked_arguments
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


def _ge_theta(channels: int, extent: int | None = None, identity_init: bool = True) -> nn.Module:
    return gather_excite(channels, extent, param=True, identity_init=identity_init)


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
# what a block asks of its arguments' values beyond their names, types and integers >= 1 (args.py);
# each is called with the builder's bound arguments
CHECKS: dict[str, Callable[..., str | None]] = {
    "cbam": cbam.check_args,
    "ge": ge.check_args,
    "ge_theta": partial(ge.check_args, param=True),
    "eca": eca.check_args,
    "sasa": sasa.check_args,
}


def check_attention(name: str, channels: int, identity_init: bool = True, **kwargs) -> None:
    """Raise the ValueError ``build_attention`` would raise for these arguments, building nothing:
    the config checks ``model.attention.kwargs`` at each stage's width before any model exists."""
    if name not in BUILDERS:
        raise ValueError(f"unknown attention type {name!r}; valid types: {', '.join(ATTENTION_TYPES)}")
    try:
        arguments = checked_arguments(BUILDERS[name], channels, identity_init=identity_init, **kwargs)
    except ValueError as e:
        raise ValueError(f"attention type {name!r}: {e}") from None
    if name in CHECKS and (problem := CHECKS[name](**arguments)):
        raise ValueError(problem)


def build_attention(name: str, channels: int, identity_init: bool = True, **kwargs) -> nn.Module:
    """Build the attention block ``name`` for ``channels`` channels; ``kwargs`` go to the block
    (e.g. ``reduction=8`` for se, ``extent=4`` or ``param=True`` for ge, ``sub_sample=False`` for
    nonlocal)."""
    check_attention(name, channels, identity_init, **kwargs)
    try:
        return BUILDERS[name](channels, identity_init=identity_init, **kwargs)
    except TypeError as e:
        raise ValueError(f"attention type {name!r}: bad keyword arguments {sorted(kwargs)} ({e})") from e
