"""Probes: what is measured while the pipeline generates.

The :class:`Probe` protocol (and :class:`Removable`, what ``attach`` returns) is defined beside
the hook mechanism in :mod:`cemaps.hooks.capture` and exported here, the one place users take
it from; a probe's arrays are :class:`cemaps.LabelledArray` s.
"""

from cemaps.hooks.capture import Probe, Removable
from cemaps.probes.cross_attention import CrossAttentionProbe, CrossAttentionSettings

__all__ = ["CrossAttentionProbe", "CrossAttentionSettings", "Probe", "Removable"]
