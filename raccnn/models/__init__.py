"""RA-CNN model pieces: crop-and-zoom, APN, backbones and the recurrent network."""
from .apn import APN
from .backbones import BACKBONES, PretrainedWeightsError, build_backbone
from .crop import GRAD_MODES, attention_crop, box_mask
from .racnn import RACNN, RACNNOutput, build_racnn, compose_boxes

__all__ = [
    "APN",
    "BACKBONES",
    "GRAD_MODES",
    "PretrainedWeightsError",
    "RACNN",
    "RACNNOutput",
    "attention_crop",
    "box_mask",
    "build_backbone",
    "build_racnn",
    "compose_boxes",
]
