"""A denoiser compiled with ``torch.compile``: plain layer names, and hooks that fire.

``pipe.unet = torch.compile(pipe.unet)`` puts a wrapper (torch's ``OptimizedModule``) where the
UNet was; its ``named_modules()`` prefix every name with ``_orig_mod.``, and the compiled code
does not run hooks registered after it was traced (dynamo skips guards on module hooks,
``torch._dynamo.config.skip_nnmodule_hook_guards``), so per-layer hooks never fire. cemaps
therefore

- reads names and attaches per-layer hooks on the original module (``wrapper._orig_mod``), so
  names stay those of ``unet.named_modules()``;
- keeps its pre- and post-call hooks on the wrapper (they run before torch enters the compiled
  code), and runs the UNet calls of captured steps as the original module, with
  ``torch.compiler.set_stance("force_eager")`` for the length of that call (:class:`EagerCalls`);
  the other steps run compiled.

With the ``eager`` backend the images are bit-identical with and without capture (tested). With a
code-generating backend (inductor) a captured step computes what the uncompiled UNet computes,
which may differ from the compiled kernels in the last bits.

A module compiled in place (``pipe.unet.compile()``) runs even its own hooks inside compiled code:
it is refused before the first UNet call (:func:`original_module`).

Example:
    >>> import torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> original_module(torch.compile(net, backend="eager"), "net") is net
    True
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from cemaps.errors import CemapsError


def original_module(module: nn.Module, name: str) -> nn.Module:
    """``module`` without its ``torch.compile`` wrappers (itself when not compiled).

    Raises:
        CemapsError: ``module`` was compiled in place (``module.compile()``), which hooks cannot see into.
    """
    while isinstance(getattr(module, "_orig_mod", None), nn.Module):
        module = module._orig_mod
    if getattr(module, "_compiled_call_impl", None) is not None:
        raise CemapsError(
            f"{name} was compiled in place ({name}.compile()), which runs capture's hooks inside compiled code; "
            f"compile it as {name} = torch.compile({name}) instead"
        )
    return module


def refuse_traced_call(name: str) -> None:
    """Refuses a denoiser call that torch.compile is tracing (a wrapper the pipeline does not hold).

    ``unet = torch.compile(pipe.unet)`` called in a loop of one's own traces cemaps' hooks into the
    compiled code, where they cannot record anything; called first thing in the denoiser's pre-hook,
    before the call computes anything.

    Raises:
        CemapsError: the call is being traced.
    """
    # torch.compiler.is_compiling() is no test: dynamo breaks the graph at the raise and reruns the hook
    # eagerly, where it is False. Inside a compiled wrapper's call the frame callback stays set, as
    # torch's own set_stance checks.
    from torch._C._dynamo.eval_frame import get_eval_frame_callback

    if get_eval_frame_callback() not in (None, False):
        raise CemapsError(
            f"{name} is being called through a torch.compile wrapper that the pipeline does not hold; "
            f"assign it ({name} = torch.compile({name})) and call that, so capture can see inside it"
        )


class EagerCalls:
    """Runs chosen calls of a compiled denoiser as its original module, so per-layer hooks fire.

    ``begin()`` (in a pre-hook on the compiled wrapper) sets torch's compiler stance to
    ``"force_eager"``; ``end()`` (in a forward hook on it, or ``remove()`` when the capture closes
    after an exception) restores the stance that was set before. A
    :class:`~cemaps.hooks.capture.Removable`: ``remove`` is safe to call twice. Does nothing for a
    denoiser that is not compiled.
    """

    def __init__(self, compiled: bool):
        self.compiled = compiled
        self._stance = contextlib.ExitStack()

    def begin(self) -> None:
        if self.compiled:
            self._stance.enter_context(torch.compiler.set_stance("force_eager"))

    def end(self) -> None:
        self._stance.close()

    def remove(self) -> None:
        self.end()
