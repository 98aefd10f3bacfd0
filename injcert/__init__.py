"""injcert: injective Neural-ODE conditional diffusion models with certified inversion."""

from __future__ import annotations

__version__ = "0.1.0"
