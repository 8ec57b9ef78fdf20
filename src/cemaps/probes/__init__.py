"""Probes: what is measured while the pipeline generates."""

from cemaps.hooks.capture import Probe, Removable
from cemaps.labelled import LabelledArray
from cemaps.probes.cross_attention import CrossAttentionProbe, CrossAttentionSettings

__all__ = ["CrossAttentionProbe", "CrossAttentionSettings", "LabelledArray", "Probe", "Removable"]
