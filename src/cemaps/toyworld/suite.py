"""The toy prompt suite (72 prompts, 4 per abstractness x domain cell) and the toy subjects.

Concrete and compositional prompts are :class:`~cemaps.toyworld.language.PromptSpec` s, so
their text is written by :func:`~cemaps.toyworld.language.caption` and their meaning can be
rendered and judged; abstract prompts are the world's abstract words
(:data:`~cemaps.toyworld.abstract_words.ABSTRACT_WORDS`, 4 per domain). Domains follow the main
suite: ``person`` = the face glyph, ``animal`` = the fish glyph, ``object`` = shapes,
``scene`` = layout and background, ``style`` = rendering style, ``abstract_idea`` =
symbols and ideas. ``toy_prompts()`` returns the same columns as
:func:`cemaps.data.load_prompts` (``in_demo24`` marks a balanced 24-prompt subset);
``prompts.csv`` beside this module is the same table, for ``prompts:`` in study.yaml.

Example:
    >>> table = toy_prompts()
    >>> len(table), table.groupby(["abstractness", "domain"]).size().unique().tolist()
    (72, [4])
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cemaps.toyworld.abstract_words import ABSTRACT_WORDS
from cemaps.toyworld.language import Phrase, PromptSpec, caption, sample_scene
from cemaps.toyworld.world import Scene, ToyObject, render

PROMPTS_CSV = Path(__file__).resolve().parent / "prompts.csv"
SUBJECTS_CSV = Path(__file__).resolve().parent / "subjects.csv"
P = Phrase
_CONCRETE: dict[str, list[PromptSpec]] = {
    "person": [
        PromptSpec((P("face", "yellow"),)),
        PromptSpec((P("face", "pink", expression="smiling"),)),
        PromptSpec((P("face", expression="sleeping"),)),
        PromptSpec((P("face", "orange", size="large"),)),
    ],
    "animal": [
        PromptSpec((P("fish", "blue"),)),
        PromptSpec((P("fish", "red", facing="left"),)),
        PromptSpec((P("fish", "green", size="small"),)),
        PromptSpec((P("fish", "yellow", size="large"),)),
    ],
    "object": [
        PromptSpec((P("circle", "red"),)),
        PromptSpec((P("square", "blue"),)),
        PromptSpec((P("triangle", "green"),)),
        PromptSpec((P("star", "yellow"),)),
    ],
    "scene": [
        PromptSpec((P("circle", "red", position="left"),)),
        PromptSpec((P("star", "blue", position="top"),)),
        PromptSpec((P("ring", "green"),), background="white"),
        PromptSpec((P("cross", "purple"),), background="grey"),
    ],
    "style": [
        PromptSpec((P("square", "blue", style="striped"),)),
        PromptSpec((P("circle", "red", style="dotted"),)),
        PromptSpec((P("star", "green", style="outline"),)),
        PromptSpec((P("ring", "pink", pale=True),)),
    ],
    "abstract_idea": [
        PromptSpec((P("cross", "red"),)),
        PromptSpec((P("star", "yellow"),), background="black"),
        PromptSpec((P("ring", "blue"),), background="white"),
        PromptSpec((P("circle", "green", position="centre"),)),
    ],
}
_COMPOSITIONAL: dict[str, list[PromptSpec]] = {
    "person": [
        PromptSpec((P("face", expression="smiling", count=2),)),
        PromptSpec((P("face", "yellow"), P("face", "blue")), "left of"),
        PromptSpec((P("face", expression="sleeping"), P("square", "red")), "above"),
        PromptSpec((P("face", size="small", count=3),)),
    ],
    "animal": [
        PromptSpec((P("fish", "blue", count=2),)),
        PromptSpec((P("fish", "red"), P("fish", "green")), "left of"),
        PromptSpec((P("fish", "yellow", size="small", count=3),)),
        PromptSpec((P("fish"), P("star", "yellow")), "below"),
    ],
    "object": [
        PromptSpec((P("ring", "blue", count=2), P("star", "yellow")), "left of"),
        PromptSpec((P("triangle", "green"), P("square", "red")), "above"),
        PromptSpec((P("circle", "red", count=3),)),
        PromptSpec((P("cross", "purple"), P("circle", "orange")), "right of"),
    ],
    "scene": [
        PromptSpec((P("circle", "red", count=2),), background="white"),
        PromptSpec((P("square", "blue"), P("circle", "yellow")), "above", background="grey"),
        PromptSpec((P("star", "green", size="small", count=4),)),
        PromptSpec((P("ring", "red"), P("ring", "blue")), "left of", background="white"),
    ],
    "style": [
        PromptSpec((P("square", "red", style="striped"), P("circle", "blue", style="dotted")), "left of"),
        PromptSpec((P("star", "green", style="outline", count=2),)),
        PromptSpec((P("ring", "yellow", style="dotted"), P("cross", "purple", style="striped")), "above"),
        PromptSpec((P("triangle", "orange", style="striped", count=3),)),
    ],
    "abstract_idea": [
        PromptSpec((P("star", "yellow"), P("ring", "blue")), "above"),
        PromptSpec((P("cross", "red", count=2),)),
        PromptSpec((P("ring", "cyan"), P("star", "pink")), "right of"),
        PromptSpec((P("star", "yellow", count=3),), background="black"),
    ],
}
DOMAIN_ORDER = ("person", "animal", "object", "scene", "style", "abstract_idea")


def toy_prompt_specs() -> list[tuple[str, str, str, PromptSpec | None]]:
    """(prompt_id, abstractness, domain, spec) rows; spec is None for abstract prompts."""
    cells: list[tuple[str, str, PromptSpec | None]] = []
    for abstractness, table in (("concrete", _CONCRETE), ("compositional", _COMPOSITIONAL)):
        for domain in DOMAIN_ORDER:
            cells += [(abstractness, domain, spec) for spec in table[domain]]
    for domain in DOMAIN_ORDER:
        cells += [("abstract", domain, None) for word in ABSTRACT_WORDS if word.domain == domain]
    return [(f"t{index:03d}", *cell) for index, cell in enumerate(cells, start=1)]


def toy_prompts() -> pd.DataFrame:
    """The toy suite with :func:`cemaps.data.load_prompts`' columns plus ``in_demo24``.

    ``in_demo24`` marks the first prompt of every abstractness x domain cell plus the second
    ``person`` and ``object`` prompt of each abstractness class (8 per class), as in the main suite.
    """
    abstract_texts = {d: [w.text for w in ABSTRACT_WORDS if w.domain == d] for d in DOMAIN_ORDER}
    records = []
    counters: dict[tuple[str, str], int] = {}
    for prompt_id, abstractness, domain, spec in toy_prompt_specs():
        position = counters.get((abstractness, domain), 0)
        counters[(abstractness, domain)] = position + 1
        text = caption(spec) if spec is not None else abstract_texts[domain][position]
        in_demo = position == 0 or (position == 1 and domain in ("person", "object"))
        records.append(
            {"prompt_id": prompt_id, "text": text, "abstractness": abstractness, "domain": domain, "in_demo24": in_demo}
        )
    return pd.DataFrame(records)


def write_prompts_csv(path: str | Path = PROMPTS_CSV) -> Path:
    """Writes :func:`toy_prompts` as CSV (the shipped ``prompts.csv`` is this file)."""
    path = Path(path)
    toy_prompts().to_csv(path, index=False)
    return path


# ----------------------------------------------------------------------------- subjects


@dataclass(frozen=True)
class ToySubject:
    """A subject to personalize: something the base world never shows as one unit.

    Attributes:
        subject_id, kind, domain, descriptor, class_word, token: as in :func:`cemaps.data.load_subjects`.
    """

    subject_id: str
    kind: str
    domain: str
    descriptor: str
    class_word: str
    token: str

    def scene(self, rng: np.random.Generator) -> Scene:
        """One random instance of the subject (position and size vary; identity does not)."""
        x, y = rng.uniform(11, 21, size=2)
        if self.kind == "face":
            # an orange face wearing a blue hat: the hat is a small square just above the face
            return Scene(
                (
                    ToyObject("face", "orange", "medium", (x, y + 2.5), expression="smiling"),
                    ToyObject("square", "blue", "small", (x, y - 6.5)),
                )
            )
        if self.kind == "object":
            # a purple ring with a yellow cross inside it
            return Scene((ToyObject("ring", "purple", "large", (x, y)), ToyObject("cross", "yellow", "small", (x, y))))
        shape = str(rng.choice(["circle", "square", "triangle", "star"]))
        return Scene((ToyObject(shape, "brown", "large", (x, y), style="checkered"),), background="white")

    def images(self, n: int = 6, seed: int = 0) -> list:
        """``n`` PIL training images of the subject, rendered at 32x32."""
        from PIL import Image

        rng = np.random.default_rng(seed)
        return [Image.fromarray(render(self.scene(rng))[0]) for _ in range(n)]


TOY_SUBJECTS: tuple[ToySubject, ...] = (
    ToySubject("toyface", "face", "person", "an orange face wearing a blue hat", "face", "<sks-toyface>"),
    ToySubject("toyobject", "object", "object", "a purple ring with a yellow cross inside", "shape", "<sks-toyobject>"),
    ToySubject("toystyle", "style", "style", "shapes drawn in brown checkers on white", "drawing", "<sks-toystyle>"),
)


def toy_subjects() -> pd.DataFrame:
    """The toy subjects with :func:`cemaps.data.load_subjects`' columns."""
    return pd.DataFrame(
        [
            {k: getattr(s, k) for k in ("subject_id", "kind", "domain", "descriptor", "class_word", "token")}
            for s in TOY_SUBJECTS
        ]
    )


def write_subjects_csv(path: str | Path = SUBJECTS_CSV) -> Path:
    """Writes :func:`toy_subjects` as CSV (the shipped ``subjects.csv``, the list ``"toyworld"``, is this file)."""
    path = Path(path)
    toy_subjects().to_csv(path, index=False)
    return path


def specs_by_text() -> dict[str, PromptSpec]:
    """Concrete and compositional suite prompts by their text (what the judge checks)."""
    return {caption(spec): spec for _, _, _, spec in toy_prompt_specs() if spec is not None}


def sample_prompt_scene(text: str, rng: np.random.Generator) -> Scene:
    """A scene meaning a suite prompt's text (concrete, compositional or abstract)."""
    from cemaps.toyworld.abstract_words import ABSTRACT_BY_TEXT

    if text in ABSTRACT_BY_TEXT:
        return ABSTRACT_BY_TEXT[text].sample(rng)
    return sample_scene(specs_by_text()[text], rng)
