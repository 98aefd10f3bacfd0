"""Data: bundled real images, patch sampling, corruption operators and the demo grid."""

from __future__ import annotations

from .corruptions import CORRUPTIONS as CORRUPTIONS
from .corruptions import MAP_CHANNELS as MAP_CHANNELS
from .corruptions import BlurRegion as BlurRegion
from .corruptions import BoxMask as BoxMask
from .corruptions import Compose as Compose
from .corruptions import Corruption as Corruption
from .corruptions import FreeFormMask as FreeFormMask
from .corruptions import GaussianNoise as GaussianNoise
from .corruptions import HollowGaps as HollowGaps
from .corruptions import Observation as Observation
from .corruptions import RandomPixelMask as RandomPixelMask
from .corruptions import corrupt_batch as corrupt_batch
from .corruptions import expand_map as expand_map
from .corruptions import gaussian_blur as gaussian_blur
from .corruptions import make_corruption as make_corruption
from .corruptions import random_corruption as random_corruption
from .grid import corruption_grid as corruption_grid
from .images import HELDOUT_IMAGES as HELDOUT_IMAGES
from .images import IMAGES as IMAGES
from .images import TRAIN_IMAGES as TRAIN_IMAGES
from .images import ImageInfo as ImageInfo
from .images import PatchDataset as PatchDataset
from .images import load_image as load_image
from .images import save_image as save_image

__all__ = [
    "CORRUPTIONS",
    "MAP_CHANNELS",
    "BlurRegion",
    "BoxMask",
    "Compose",
    "Corruption",
    "FreeFormMask",
    "GaussianNoise",
    "HollowGaps",
    "Observation",
    "RandomPixelMask",
    "corrupt_batch",
    "expand_map",
    "gaussian_blur",
    "make_corruption",
    "random_corruption",
    "corruption_grid",
    "HELDOUT_IMAGES",
    "IMAGES",
    "TRAIN_IMAGES",
    "ImageInfo",
    "PatchDataset",
    "load_image",
    "save_image",
]
