"""The personalization methods cemaps loads and trains: one definition for configs, loaders and trainers.

Kept free of heavy imports so that reading a study config does not import torch or diffusers.

Example:
    >>> METHODS
    ('lora', 'textual_inversion', 'dreambooth')
"""

from __future__ import annotations

from typing import Literal

Method = Literal["lora", "textual_inversion", "dreambooth"]
METHODS: tuple[str, ...] = ("lora", "textual_inversion", "dreambooth")
# What every trainer writes beside its weights (settings, versions); a loader finds a trained token there.
METADATA_NAME = "cemaps_train.json"
