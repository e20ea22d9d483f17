"""RA-CNN model pieces: crop-and-zoom, APN and other proposers, backbones and the recurrent network."""
from .apn import APN
from .backbones import BACKBONES, PretrainedWeightsError, build_backbone
from .boxes import compose_boxes
from .crop import GRAD_MODES, attention_crop, box_mask
from .proposers import PROPOSERS
from .racnn import RACNN, RACNNOutput, build_racnn

__all__ = [
    "APN",
    "BACKBONES",
    "GRAD_MODES",
    "PROPOSERS",
    "PretrainedWeightsError",
    "RACNN",
    "RACNNOutput",
    "attention_crop",
    "box_mask",
    "build_backbone",
    "build_racnn",
    "compose_boxes",
]
