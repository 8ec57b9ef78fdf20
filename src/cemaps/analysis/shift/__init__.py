"""Attention shift: how far each layer's text-attention maps moved from the base twin's.

``attention_shift`` (Jensen-Shannon divergence per record, layer and token, streamed
from the store), ``arrays`` (the per-layer array maths) and ``kernel`` (the fused kernel
the table uses).
"""
