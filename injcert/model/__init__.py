"""The score network, its certifiable layers, noise schedules and the training objective."""

from __future__ import annotations

from .layers import LipConv2d as LipConv2d
from .layers import ResBlock as ResBlock
from .objective import denoising_loss as denoising_loss
from .schedule import CosineSchedule as CosineSchedule
from .schedule import LinearSchedule as LinearSchedule
from .schedule import VPSchedule as VPSchedule
from .schedule import get_schedule as get_schedule
from .unet import DEFAULT_MODEL_CONFIG as DEFAULT_MODEL_CONFIG
from .unet import CondUNet as CondUNet

__all__ = [
    "VPSchedule",
    "CosineSchedule",
    "LinearSchedule",
    "get_schedule",
    "LipConv2d",
    "ResBlock",
    "CondUNet",
    "DEFAULT_MODEL_CONFIG",
    "denoising_loss",
]
