"""``capture(pipe, probes)``: attach probes for the duration of a ``with`` block.

The run object is both the context manager and the result (as in baukit's
``TraceDict``). Every hook is removed when the block ends, normally or by an
exception, in reverse order of attachment. A run is used once: entering a finished
run again is an error (its results would silently mix two captures).

Example:
    >>> import torch, cemaps
    >>> pipe = cemaps.tiny_pipeline(seed=0)
    >>> probe = cemaps.CrossAttentionProbe(layers="*attn2", timesteps=2)
    >>> with cemaps.capture(pipe, [probe]) as run:
    ...     _ = pipe("a lighthouse", num_inference_steps=4, generator=torch.Generator().manual_seed(0))
    >>> run[probe]["mid_block.attentions.0.transformer_blocks.0.attn2"].axes
    ('image', 'token', 'step', 'half', 'head', 'y', 'x')
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from cemaps.errors import CemapsError
from cemaps.hooks.context import CaptureContext
from cemaps.hooks.dit_context import capture_context


@runtime_checkable
class Removable(Protocol):
    """Something attached that ``remove()`` detaches; removing twice is a no-op.

    torch's ``RemovableHandle`` (what ``register_forward_hook`` returns) is one.
    """

    def remove(self) -> None: ...


@runtime_checkable
class Probe(Protocol):
    """What a probe implements to be captured and stored.

    ``attach`` registers hooks and returns :class:`Removable` handles (torch's hook
    handles, or objects of its own whose ``remove()`` is safe to call twice); cemaps
    removes them, most recent first, when the capture ends. Hooks whose order
    matters relative to other hooks on the same module say so with torch's
    ``prepend=True``. ``collect`` returns, for each image generated while attached, a dict of
    named arrays; each array is anything with ``values`` (numpy) and ``axes``
    (names), such as :class:`cemaps.LabelledArray`. The store writes them
    as they are, under ``"<probe.name>/<array name>"``.

    The capture context (``context``, a :class:`cemaps.hooks.context.CaptureContext`) is what a
    probe reads to label what it sees; cemaps updates it in a UNet pre-hook that runs before
    any probe's hook:

    - ``context.generations``: one :class:`cemaps.hooks.steps.Generation` per pipeline call
      (``pipe(...)``) seen so far; ``context.generation`` is the current one (valid inside hooks).
    - ``generation.index``: its position among the run's pipeline calls (key per-call state on it).
    - ``generation.batch_size``: images of the call (the UNet batch without the unconditional half);
      ``generation.images_per_prompt`` and ``generation.prompt_of_image(i)`` map images to prompts.
    - ``generation.guidance`` and ``generation.halves``: whether the first step held two halves, and
      their labels in batch order (``("uncond", "cond")``, diffusers' order, or ``("cond",)``);
      ``generation.step_halves[step]`` per step (a callback may turn guidance off mid-run) and
      ``context.call_halves`` for the current UNet call, whose input is
      ``[len(context.call_halves) * batch_size, ...]``. ``context.completes_step``: the call is the cond
      half of the previous call's step (guidance run as two calls, :mod:`cemaps.hooks.guidance`).
    - ``context.unet``: the denoiser whose ``named_modules()`` name layers (the original module when
      ``pipe.unet`` is a ``torch.compile`` wrapper); ``context.entry``: the module the pipeline calls,
      where pre- and post-call hooks go (:mod:`cemaps.hooks.compiled`).
    - ``generation.timesteps`` (one per UNet call so far: a step is a UNet call),
      ``generation.schedule_indices`` (each call's place in ``generation.schedule``),
      ``generation.planned_steps``; ``context.step_index`` is the current call's step.
    - ``generation.token_ids`` / ``negative_token_ids``: ``[prompts, seq]`` token ids (None when the
      pipeline got ``prompt_embeds``); ``context.tokenizer`` turns them into strings.
    - ``generation.latent_hw``: the latents' (height, width).

    ``collect`` is called once, after the ``with`` block, and returns one dict per image in
    generation order: for each generation, its ``batch_size`` images.

    Example (the whole protocol; :class:`cemaps.probes.examples.OutputNormProbe` is a fuller one):
        >>> import torch, cemaps
        >>> from cemaps.labelled import LabelledArray
        >>> class TimestepProbe:
        ...     name = "timesteps"
        ...     def attach(self, pipe, context):
        ...         return []  # no hooks: the context alone records the steps
        ...     def collect(self, context):
        ...         return [
        ...             {"t": LabelledArray(torch.tensor(g.timesteps).numpy(), ("step",), {})}
        ...             for g in context.generations
        ...             for _ in range(g.batch_size)
        ...         ]
        >>> pipe = cemaps.tiny_pipeline(seed=0)
        >>> with cemaps.capture(pipe, [TimestepProbe()]) as run:
        ...     _ = pipe(["a red mug", "a cat"], num_inference_steps=3, generator=torch.Generator().manual_seed(0))
        >>> run["timesteps"]["t"].shape  # [image, step]: PNDM's warm-up makes 4 UNet calls for 3 steps
        (2, 4)
    """

    name: str

    def attach(self, pipe: Any, context: CaptureContext) -> list[Removable]: ...

    def collect(self, context: CaptureContext) -> list[dict[str, Any]]: ...


class CaptureRun:
    """An open (or finished) capture: ``run[probe]`` gives the probe's arrays."""

    def __init__(self, pipe: Any, probes: Sequence[Probe]):
        names = [p.name for p in probes]
        if len(set(names)) != len(names):
            raise ValueError(f"probe names must be unique, got {names}")
        self.pipe = pipe
        self.probes = list(probes)
        self.context = capture_context(pipe)
        self._handles: list[Removable] = []
        self._records: dict[str, list[dict[str, Any]]] | None = None
        self._entered = False

    def __enter__(self) -> CaptureRun:
        if self._entered:
            raise CemapsError("this capture run was already used; start a new one with cemaps.capture(pipe, probes)")
        self._entered = True
        try:
            self._handles.extend(self.context.attach())
            for probe in self.probes:
                handles = list(probe.attach(self.pipe, self.context))
                self._handles.extend(h for h in handles if isinstance(h, Removable))
                wrong = [h for h in handles if not isinstance(h, Removable)]
                if wrong:
                    raise TypeError(
                        f"probe {probe.name!r}: attach returned {type(wrong[0]).__name__} "
                        "objects without remove(); return torch hook handles (Removable)"
                    )
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()
        if exc_type is None:
            self._records = {p.name: p.collect(self.context) for p in self.probes}

    def close(self) -> None:
        """Remove every hook, most recent first. Safe to call twice."""
        while self._handles:
            self._handles.pop().remove()

    def records(self) -> list[dict[str, Any]]:
        """Per generated image, every probe's arrays keyed ``"<probe>/<array>"``."""
        per_probe = self._finished()
        n_images = sum(g.batch_size for g in self.context.generations)
        merged: list[dict[str, Any]] = [{} for _ in range(n_images)]
        for probe_name, images in per_probe.items():
            if len(images) != n_images:
                raise RuntimeError(f"probe {probe_name!r} returned {len(images)} records for {n_images} images")
            for target, arrays in zip(merged, images, strict=False):
                target.update({f"{probe_name}/{name}": array for name, array in arrays.items()})
        return merged

    def __getitem__(self, probe: Probe | str) -> dict[str, Any]:
        """The probe's arrays over all images, stacked on a leading ``image`` axis."""
        from cemaps.labelled import stack_images

        name = probe if isinstance(probe, str) else probe.name
        images = self._finished()[name]
        keys = images[0].keys() if images else ()
        return {key: stack_images([arrays[key] for arrays in images]) for key in keys}

    def _finished(self) -> dict[str, list[dict[str, Any]]]:
        if self._records is None:
            raise RuntimeError("the capture is still open (or failed): read results after the with-block")
        return self._records


def capture(pipe: Any, probes: Sequence[Probe]) -> CaptureRun:
    """Capture ``probes`` while ``pipe`` generates inside a ``with`` block."""
    return CaptureRun(pipe, probes)
