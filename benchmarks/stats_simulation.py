"""Simulated studies with the nuisance structure of real ones, for measuring null rates and power.

A value of one (model, prompt) pair is

    prompt effect (shared by every model)  + model effect  + subject effect (shared by a subject's models)
    + method offset  + noise  [+ a planted effect]

which is the null of issue 10: a test that counts the rows of one prompt (or of
one model) as independent replicates rejects a true null far more often than
alpha here. The defaults are the issue's design: 24 prompts (8 per
abstractness class), 3 subjects x 3 methods, prompt SD 1.0, model SD 0.5,
subject SD 0.5, method offsets 0 / 0.5 / 1.0, noise SD 0.3. A test *about*
methods is run with ``method_offsets`` all zero; every other test keeps them.

Issue 21's nulls add, each by a field of :class:`StudyDesign`: domain main effects
(``domain_sd``: some prompt domains more fragile under every model), method-dependent
variance (``method_model_sd``), a method whose pairs are all structural zeros with skewed,
zero-heavy disruption (``zero_method``, ``skewed``), heavy-tailed noise (``noise_df``),
models missing prompts (``missing_share``), and 1 or 2 subjects per method (``n_subjects``).

Example:
    >>> import numpy as np
    >>> table = simulate_study(StudyDesign(), np.random.default_rng(0))
    >>> table.shape[0], sorted(table["abstractness"].unique())
    (216, ['abstract', 'compositional', 'concrete'])
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

STRUCTURAL_ZERO_COLUMN = "structural_zero"
CLASSES = ("concrete", "abstract", "compositional")
DOMAINS = ("faces", "objects", "styles", "scenes")
SUBJECT_DOMAINS = ("faces", "objects", "styles")
LAYERS = (
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "mid_block.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
    "up_blocks.2.attentions.1.transformer_blocks.0.attn2",
)


@dataclass(frozen=True)
class StudyDesign:
    """Sizes and variance components of a simulated study (SDs in the metric's units).

    Attributes:
        n_subjects: subjects, each personalized once by every method.
        methods: method names; models = subjects x methods.
        n_prompts: prompts; class ``p % 3`` of ``CLASSES``, domain ``(p // 3) % 4`` of ``DOMAINS``.
        prompt_sd: SD of the prompt effect shared by every model (issue 10: 1.0).
        model_sd: SD of each model's own effect (0.5).
        subject_sd: SD of each subject's effect, shared by its models (0.5).
        method_offsets: fixed offset per method (0 / 0.5 / 1.0); zero them for a test about methods.
        noise_sd: SD of the (model, prompt) residual (0.3).
        domain_sd: SD of a prompt-domain effect shared by every model (a domain main effect; 0).
        method_model_sd: per-method SD of the model effect instead of ``model_sd`` (method-dependent variance).
        noise_df: degrees of freedom of t-distributed noise (heavy tails; None = normal).
        skewed: values become exp(value) - 1 floored at 0: skewed, non-negative, zero-heavy.
        zero_method: a method whose pairs are all exactly 0 and flagged ``structural_zero`` (Textual Inversion).
        missing_share: share of (model, prompt) rows dropped at random (models missing prompts).
    """

    n_subjects: int = 3
    methods: tuple[str, ...] = ("lora", "textual_inversion", "dreambooth")
    n_prompts: int = 24
    prompt_sd: float = 1.0
    model_sd: float = 0.5
    subject_sd: float = 0.5
    method_offsets: tuple[float, ...] = (0.0, 0.5, 1.0)
    noise_sd: float = 0.3
    domain_sd: float = 0.0
    method_model_sd: tuple[float, ...] | None = None
    noise_df: float | None = None
    skewed: bool = False
    zero_method: str | None = None
    missing_share: float = 0.0

    def without_method_offsets(self) -> StudyDesign:
        """The same design with every method offset 0 (the null of a test about methods)."""
        return replace(self, method_offsets=(0.0,) * len(self.methods))


def simulate_study(
    design: StudyDesign, rng: np.random.Generator, *, abstract_effect: float = 0.0, in_domain_effect: float = 0.0
) -> pd.DataFrame:
    """One simulated disruption table, one row per (model, prompt).

    Args:
        design: sizes and variance components.
        rng: numpy Generator (all randomness comes from it).
        abstract_effect: added to every pair of a non-concrete prompt (planted abstractness effect).
        in_domain_effect: added where the prompt's domain is the subject's (planted proximity effect).

    Returns:
        Columns model_id, method, subject_id, subject_domain, prompt_id, abstractness, domain,
        alignment_drop; models x prompts rows, models in (method, subject) order.
    """
    n_methods, n_subjects, n_prompts = len(design.methods), design.n_subjects, design.n_prompts
    n_models = n_methods * n_subjects
    method_index = np.repeat(np.arange(n_methods), n_subjects)  # [n_models]
    subject_index = np.tile(np.arange(n_subjects), n_methods)  # [n_models]
    prompt_class = np.array([CLASSES[p % 3] for p in range(n_prompts)])
    prompt_domain = np.array([DOMAINS[(p // 3) % len(DOMAINS)] for p in range(n_prompts)])
    subject_domain = np.array([SUBJECT_DOMAINS[s % len(SUBJECT_DOMAINS)] for s in range(n_subjects)])
    model_sd = (
        np.asarray(design.method_model_sd, dtype=np.float64)[method_index]
        if design.method_model_sd is not None
        else np.full(n_models, design.model_sd)
    )
    model_level = (
        rng.normal(0.0, 1.0, n_models) * model_sd
        + rng.normal(0.0, design.subject_sd, n_subjects)[subject_index]
        + np.asarray(design.method_offsets, dtype=np.float64)[method_index]
    )
    if design.noise_df is None:
        noise = rng.normal(0.0, design.noise_sd, (n_models, n_prompts))
    else:  # t noise scaled to the same SD
        df = design.noise_df
        noise = rng.standard_t(df, (n_models, n_prompts)) * design.noise_sd / np.sqrt(df / (df - 2))
    domain_effect = dict(zip(DOMAINS, rng.normal(0.0, design.domain_sd, len(DOMAINS)), strict=True))
    value = (
        model_level[:, None]
        + rng.normal(0.0, design.prompt_sd, n_prompts)[None, :]
        + np.array([domain_effect[d] for d in prompt_domain])[None, :]
        + noise
        + abstract_effect * (prompt_class != "concrete")[None, :]
        + in_domain_effect * (prompt_domain[None, :] == subject_domain[subject_index][:, None])
    )
    if design.skewed:
        value = np.maximum(np.expm1(value), 0.0)
    zero = np.zeros_like(value, dtype=bool)
    if design.zero_method is not None:
        zero[np.asarray(design.methods)[method_index] == design.zero_method] = True
        value[zero] = 0.0
    methods = np.asarray(design.methods)
    subjects = np.array([f"s{s}" for s in range(n_subjects)])
    model_ids = np.char.add(np.char.add(methods[method_index], "-"), subjects[subject_index])
    table = pd.DataFrame(
        {
            "model_id": np.repeat(model_ids, n_prompts),
            "method": np.repeat(methods[method_index], n_prompts),
            "subject_id": np.repeat(subjects[subject_index], n_prompts),
            "subject_domain": np.repeat(subject_domain[subject_index], n_prompts),
            "prompt_id": np.tile(np.array([f"p{p:03d}" for p in range(n_prompts)]), n_models),
            "abstractness": np.tile(prompt_class, n_models),
            "domain": np.tile(prompt_domain, n_models),
            "alignment_drop": value.ravel(),
            "structural_zero": zero.ravel(),
        }
    )
    if design.missing_share > 0:
        table = table[rng.random(len(table)) >= design.missing_share].reset_index(drop=True)
    return table


def simulate_shift(
    design: StudyDesign,
    table: pd.DataFrame,
    rng: np.random.Generator,
    linked_layer: str | None = None,
    link: float = 0.0,
) -> pd.DataFrame:
    """Per-layer attention shifts with the same structure (prompt, model effects and noise per layer).

    Under the null the shifts are independent of ``table``'s disruption, yet both
    carry prompt effects shared by every model. With ``linked_layer``, ``link``
    times that layer's shift is added to ``table["alignment_drop"]`` (in place).

    Returns:
        Columns model_id, prompt_id, layer, attention_shift.
    """
    n_models = len(design.methods) * design.n_subjects
    n_prompts, n_layers = design.n_prompts, len(LAYERS)
    grid = (
        rng.normal(0.0, design.prompt_sd, (n_layers, 1, n_prompts))
        + rng.normal(0.0, design.model_sd, (n_layers, n_models, 1))
        + rng.normal(0.0, design.noise_sd, (n_layers, n_models, n_prompts))
    )  # [layer, model, prompt]
    model_codes = pd.factorize(table["model_id"])[0] if len(table) else np.zeros(0, int)
    prompt_codes = table["prompt_id"].str[1:].astype(int).to_numpy()
    shift = grid[:, model_codes, prompt_codes]  # [layer, row]; rows of ``table`` (which may miss pairs)
    if STRUCTURAL_ZERO_COLUMN in table:
        shift[:, table[STRUCTURAL_ZERO_COLUMN].to_numpy(dtype=bool)] = 0.0  # bit-identical maps: no shift
    if linked_layer is not None:
        table["alignment_drop"] = table["alignment_drop"].to_numpy() + link * shift[LAYERS.index(linked_layer)]
    return pd.DataFrame(
        {
            "model_id": np.tile(table["model_id"].to_numpy(), n_layers),
            "prompt_id": np.tile(table["prompt_id"].to_numpy(), n_layers),
            "layer": np.repeat(np.array(LAYERS), len(table)),
            "attention_shift": shift.ravel(),
        }
    )


def simulate_similarity(
    design: StudyDesign, table: pd.DataFrame, rng: np.random.Generator, domain_link: float = 0.0
) -> pd.DataFrame:
    """Text similarity of subject and prompt: prompt effect + subject effect + noise, independent of disruption.

    Similarity depends on (subject, prompt) only, so the models of one subject share it. With
    ``domain_link``, prompts of the subject's domain are that much more similar: the confound of
    issue 21, where similarity follows domain and disruption follows domain main effects.

    Returns:
        Columns model_id, prompt_id, similarity.
    """
    per_subject = (
        rng.normal(0.0, design.prompt_sd, (1, design.n_prompts))
        + rng.normal(0.0, design.subject_sd, (design.n_subjects, 1))
        + rng.normal(0.0, design.noise_sd, (design.n_subjects, design.n_prompts))
    )
    subject = table["subject_id"].str[1:].astype(int).to_numpy()
    prompt = table["prompt_id"].str[1:].astype(int).to_numpy()
    same_domain = (table["domain"] == table["subject_domain"]).to_numpy()
    return table[["model_id", "prompt_id"]].assign(similarity=per_subject[subject, prompt] + domain_link * same_domain)
