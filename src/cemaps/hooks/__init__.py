"""Hooks: find modules by name, attach, always detach; track denoising steps."""

from cemaps.hooks.capture import CaptureRun, capture
from cemaps.hooks.context import CaptureContext
from cemaps.hooks.selection import select_modules
from cemaps.hooks.steps import Generation, selected_steps

__all__ = [
    "CaptureContext",
    "CaptureRun",
    "Generation",
    "capture",
    "select_modules",
    "selected_steps",
]
