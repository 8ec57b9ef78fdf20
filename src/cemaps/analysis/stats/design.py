"""A study's design and variance components: what the power simulation (:mod:`cemaps.analysis.stats.power`) draws from.

:class:`StudyLayout` is which models (method, subject, subject domain) and prompts
(abstractness class, domain) a study has, read from a disruption table
(:func:`layout_from_table`) or from a study config before any capture (:func:`layout_from_study`).
:class:`VarianceComponents` are the SDs of issue 10's model of a study's values (see
:mod:`cemaps.analysis.stats.power`), assumed or estimated from a study's own grid
(:func:`estimate_components`).

Example:
    >>> import pandas as pd
    >>> table = pd.DataFrame(dict(model_id=["a", "a", "b", "b"], prompt_id=["p", "q"] * 2, method=["lora"] * 4,
    ...                           subject_id=["s", "s", "t", "t"], abstractness=["concrete", "abstract"] * 2))
    >>> layout = layout_from_table(table)
    >>> layout.n_models, layout.n_prompts, layout.prompt_class
    (2, 2, ('concrete', 'abstract'))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cemaps.analysis.stats.common import StatsInputError


@dataclass(frozen=True)
class VarianceComponents:
    """SDs of the study model's parts, in the metric's units (the model in :mod:`cemaps.analysis.stats.power`).

    The defaults are the ratios of issue 10's simulated null (prompt 1.0, model 0.5, subject
    0.5, residual 0.3 taken as one seed's noise, no model x domain effect): before a capture
    the metric's scale is unknown, so an MDE under them is in units of the prompt SD. :func:`estimate_components`
    measures them on a study's own table.
    """

    prompt_sd: float = 1.0
    model_sd: float = 0.5
    subject_sd: float = 0.5
    pair_sd: float = 0.0
    seed_sd: float = 0.3
    domain_sd: float = 0.0
    source: str = "assumed: issue 10's ratios, in units of the prompt SD"


@dataclass(frozen=True)
class StudyLayout:
    """Which models and prompts a study has, one entry per model / per prompt.

    Attributes:
        model_method, model_subject, model_subject_domain: [n_models] labels of each personalized model.
        prompt_class: [n_prompts] abstractness class (``concrete`` is the reference), or () when unlabelled.
        prompt_domain: [n_prompts] domain, or () when unlabelled.
        n_seeds: seeds each (model, prompt) value averages.
    """

    model_method: tuple[str, ...]
    model_subject: tuple[str, ...]
    model_subject_domain: tuple[str | None, ...]
    prompt_class: tuple[str, ...]
    prompt_domain: tuple[str, ...]
    n_seeds: int = 1

    @property
    def n_models(self) -> int:
        return len(self.model_method)

    @property
    def n_prompts(self) -> int:
        return max(len(self.prompt_class), len(self.prompt_domain))


def layout_from_table(disruption: pd.DataFrame, n_seeds: int = 1) -> StudyLayout:
    """The layout of a (model_id, prompt_id) table with method, subject_id, subject_domain, abstractness, domain."""
    models = disruption.drop_duplicates("model_id").sort_values("model_id")
    prompts = disruption.drop_duplicates("prompt_id").sort_values("prompt_id")

    def column(table: pd.DataFrame, name: str) -> tuple:
        if name not in table or table[name].isna().all():
            return ()
        return tuple(table[name].astype(str))

    return StudyLayout(
        model_method=tuple(models["method"].astype(str)),
        model_subject=tuple(models["subject_id"].astype(str)),
        model_subject_domain=column(models, "subject_domain") or (None,) * len(models),
        prompt_class=column(prompts, "abstractness"),
        prompt_domain=column(prompts, "domain"),
        n_seeds=int(n_seeds),
    )


def estimate_components(
    grid: pd.DataFrame, method: pd.Series, subject: pd.Series, seed_sd: float, prompt_domain: pd.Series | None = None
) -> VarianceComponents:
    """Method-of-moments variance components of a complete [n_models x n_prompts] grid of seed-averaged values.

    residual = double-centred residual variance x MP / ((M-1)(P-1)); prompt = variance of prompt
    means - residual / M; model level = variance of model means around their method's mean -
    residual / P, split into subject (mean covariance of a subject's models' deviations) and
    model; with ``prompt_domain`` (prompt_id -> domain), domain = variance of the residual's
    model x domain cell means - residual x mean(1 / prompts per domain). ``seed_sd`` is one
    seed's SD (from the pairs' SD over seeds). The residual returned as ``pair_sd`` still holds
    the seed noise; :func:`minimum_detectable_effects` adds ``seed_sd`` only when ``pair_sd``
    does not (see ``run_statistics``). Negative estimates are set to 0.
    """
    x = grid.to_numpy(dtype=np.float64)
    m, p = x.shape
    if m < 2 or p < 2:
        raise StatsInputError(f"grid: expected >= 2 models and >= 2 prompts, got shape {x.shape}")
    residual = x - x.mean(axis=1, keepdims=True) - x.mean(axis=0, keepdims=True) + x.mean()
    residual_var = float(np.sum(residual**2) / ((m - 1) * (p - 1)))
    prompt_var = max(0.0, float(np.var(x.mean(axis=0), ddof=1)) - residual_var / m)
    model_means = pd.Series(x.mean(axis=1), index=grid.index)
    deviation = model_means - model_means.groupby(method.loc[grid.index].to_numpy()).transform("mean")
    level_var = max(0.0, float(np.mean(deviation**2)) - residual_var / p)
    products = []
    for _, members in deviation.groupby(subject.loc[grid.index].to_numpy()):
        values = members.to_numpy()
        products += [values[i] * values[j] for i in range(values.size) for j in range(i + 1, values.size)]
    subject_var = min(level_var, max(0.0, float(np.mean(products)))) if products else 0.0
    domain_var = 0.0
    if prompt_domain is not None:
        codes, _ = pd.factorize(prompt_domain.loc[grid.columns].astype(str))
        sizes = np.bincount(codes)
        cells = np.stack([residual[:, codes == c].mean(axis=1) for c in range(sizes.size)], axis=1)  # [M, D]
        domain_var = max(0.0, float(np.mean(cells**2)) - residual_var * float(np.mean(1.0 / sizes)))
    return VarianceComponents(
        prompt_sd=float(np.sqrt(prompt_var)),
        model_sd=float(np.sqrt(level_var - subject_var)),
        subject_sd=float(np.sqrt(subject_var)),
        pair_sd=float(np.sqrt(residual_var)),  # the caller removes the seed part (see minimum_detectable_effects)
        seed_sd=float(seed_sd),
        domain_sd=float(np.sqrt(domain_var)),
        source="estimated from this study (method of moments on its models x prompts grid)",
    )


def layout_from_study(config: Any, subjects: str = "subjects15") -> StudyLayout:
    """The layout a study config will produce: its personalized models, its prompts' labels, its seeds.

    Prompt labels come from the prompt list (an inline list has none; "unlabelled" counts as none);
    subject domains from ``subjects`` (the pipeline's default list); an unknown subject has no domain.
    """
    from cemaps.data import load_prompts, load_subjects

    prompts = load_prompts(config.prompts) if isinstance(config.prompts, str) else pd.DataFrame()
    domains = load_subjects(subjects).set_index("subject_id")["domain"].astype(str).to_dict()

    def labels(column: str) -> tuple[str, ...]:
        if column not in prompts or (prompts[column].astype(str) == "unlabelled").any():
            return ()
        return tuple(prompts[column].astype(str))

    entries = config.personalized
    return StudyLayout(
        model_method=tuple(e.method for e in entries),
        model_subject=tuple(e.subject or e.id for e in entries),
        model_subject_domain=tuple(domains.get(e.subject) for e in entries),
        prompt_class=labels("abstractness"),
        prompt_domain=labels("domain"),
        n_seeds=len(config.seeds),
    )
