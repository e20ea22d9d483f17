"""Datasets, transforms and splits: CUB-200-2011, Stanford Dogs, Stanford Cars, FGVC-Aircraft, NABirds,
class-per-folder data and FG-Synth."""
from ..errors import DatasetError
from .splits import stratified_split
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms, flip_permutation
from .cub import CUBDataset
from .aircraft import FGVCAircraft
from .cars import StanfordCars
from .dogs import StanfordDogs
from .nabirds import NABirds
from .folder import FolderDataset
from .synthetic import DISCRIMINATIVE_PART, ensure_fgsynth, generate_fgsynth

__all__ = [
    "DatasetError",
    "stratified_split",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "build_transforms",
    "flip_permutation",
    "CUBDataset",
    "StanfordDogs",
    "StanfordCars",
    "FGVCAircraft",
    "NABirds",
    "FolderDataset",
    "DISCRIMINATIVE_PART",
    "ensure_fgsynth",
    "generate_fgsynth",
]
