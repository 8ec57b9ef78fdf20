"""The trained toy world: a world whose truth is known, and models trained on it.

* :mod:`~cemaps.toyworld.world`: vocabulary and the renderer (images with one mask per object);
* :mod:`~cemaps.toyworld.language`: captions and scene sampling;
* :mod:`~cemaps.toyworld.abstract_words`: the abstract words' definitions;
* :mod:`~cemaps.toyworld.suite`: the labelled toy prompt suite and toy subjects;
* :mod:`~cemaps.toyworld.judge`: what an image shows, from its pixels only;
* :mod:`~cemaps.toyworld.subject_check`: whether an image shows a toy subject (pixels only);
* :mod:`~cemaps.toyworld.attention`: word maps scored as segmentations (DAAM's mIoU);
* :mod:`~cemaps.toyworld.evaluate`: the quality benchmark's checks (``benchmarks/toyworld_quality.py``);
* :mod:`~cemaps.toyworld.ground_truth`: the same checks read from a study's stores (``cemaps analyze``);
* :mod:`~cemaps.toyworld.architecture`: the model architectures;
* :mod:`~cemaps.toyworld.train`, :mod:`~cemaps.toyworld.clip_training`,
  :mod:`~cemaps.toyworld.train_records`: training the pipeline and the toy CLIP
  (``cemaps toyworld train``), their logs and records;
* :mod:`~cemaps.toyworld.assets`: the shipped weights; :mod:`~cemaps.toyworld.scorer`: the toy CLIP
  as a scorer;
* :mod:`~cemaps.toyworld.report_section`: the report's banner and "Toy-world ground truth" section;
* :mod:`~cemaps.toyworld.registration`: :func:`register` adds the toy world to the core's registries
  (the alias ``"cemaps/toyworld"``, its CLIP scorer, its result tables, its report section).

The core never imports this package. The CLI and the demo call :func:`register`; in Python::

    import cemaps, cemaps.toyworld
    cemaps.toyworld.register()
    pipe = cemaps.load_pipeline("cemaps/toyworld")

Importing this package imports nothing heavy and registers nothing; the submodules do the work.
"""

from typing import TYPE_CHECKING

__all__ = ["register"]

if TYPE_CHECKING:
    from cemaps.toyworld.registration import register


def __getattr__(name: str):
    if name != "register":
        raise AttributeError(f"module 'cemaps.toyworld' has no attribute {name!r}")
    from cemaps.toyworld.registration import register

    return register
