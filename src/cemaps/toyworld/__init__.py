"""The trained toy world: a world whose truth is known, and models trained on it.

* :mod:`~cemaps.toyworld.world`: vocabulary and the renderer (images with one mask per object);
* :mod:`~cemaps.toyworld.language`: captions and scene sampling;
* :mod:`~cemaps.toyworld.abstract_words`: the abstract words' definitions;
* :mod:`~cemaps.toyworld.suite`: the labelled toy prompt suite and toy subjects;
* :mod:`~cemaps.toyworld.judge`: what an image shows, from its pixels only;
* :mod:`~cemaps.toyworld.train`: training the pipeline and the toy CLIP;
* :mod:`~cemaps.toyworld.assets`: the shipped weights (``cemaps.load_pipeline("cemaps/toyworld")``,
  ``ClipScorer.toyworld()``).

Importing this package imports nothing heavy; the submodules do.
"""
