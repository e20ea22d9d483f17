"""Attention blocks mapping [B, C, H, W] -> [B, C, H, W]: ``build_attention`` by name
(``create.py``) and their insertion into VGG trunks (``placement.py``)."""
from .create import ATTENTION_TYPES, build_attention
from .placement import insert_attention

__all__ = ["ATTENTION_TYPES", "build_attention", "insert_attention"]
