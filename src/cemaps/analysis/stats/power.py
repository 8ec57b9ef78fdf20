"""Power: the smallest effect each question's test finds with 80% power, simulated from the study's own design.

A study's values are modelled as issue 10's variance components (all in the metric's units)::

    value[model, prompt] = prompt effect (SD prompt_sd, shared by every model)
                         + model effect (SD model_sd) + subject effect (SD subject_sd, shared by a subject's models)
                         + a model x prompt-domain effect (SD domain_sd: a model's own domain preferences)
                         + pair residual (SD pair_sd) + mean of n_seeds seed draws (SD seed_sd each)
                         + the planted effect

For each question the planted effect is scaled until the question's test rejects in 80% of
simulated studies of exactly the study's layout (its models, subjects, methods, prompts,
labels and seeds): the minimum detectable effect (MDE). Simulations share their random draws
across effect sizes (common random numbers), so power rises monotonically with the effect and
a bisection finds it. Each test is the one the report shows, with its reference distribution:

- methods: Hotelling's T^2 on method contrasts of model means (exact F); effect = the largest
  method difference, methods' offsets spaced evenly from 0 to it;
- abstractness: one-way ANOVA F on model-centred prompt effects (the permutation ANOVA's
  statistic; F reference, exact under normal prompt effects); effect = added to every
  non-concrete prompt;
- semantic proximity: the interaction statistic on prompt-centred values with its null from
  arrangements of the subjects' domains (199 or all); effect = added where a prompt's domain
  is its model's subject's; a design with too few arrangements has no MDE, and says why;
- layer linking: Spearman rho of one layer's shift (same components) with disruption + beta x
  shift; two-sided, null SD from simulations (normal tail); effect reported as the median rho.

Each test runs at ``alpha / m``, m = the tests of its question that the report corrects
together (Holm's first step: the power of the smallest p to survive), as given by ``family_size``.
The design (:class:`StudyLayout`) and the components (:class:`VarianceComponents`, estimated by
:func:`estimate_components`) live in :mod:`cemaps.analysis.stats.design` and are importable from here.

Example:
    >>> layout = StudyLayout(model_method=("lora", "db") * 3, model_subject=("a", "a", "b", "b", "c", "c"),
    ...                      model_subject_domain=("faces",) * 2 + ("objects",) * 2 + ("styles",) * 2,
    ...                      prompt_class=("concrete", "abstract") * 12,
    ...                      prompt_domain=("faces", "objects", "styles") * 8, n_seeds=2)
    >>> table = minimum_detectable_effects(layout, VarianceComponents(), n_sims=200)
    >>> list(table["question"])
    ['methods', 'abstractness', 'semantic_proximity', 'layer_linking']
    >>> bool(table.set_index("question").loc["abstractness", "mde"] > 0)
    True
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from cemaps.analysis.stats.common import check_positive_int
from cemaps.analysis.stats.design import (
    StudyLayout,
    VarianceComponents,
    estimate_components,
    layout_from_study,
    layout_from_table,
)

TARGET_POWER = 0.8
ALPHA = 0.05
BISECTION_STEPS = 11
QUESTIONS = ("methods", "abstractness", "semantic_proximity", "layer_linking")
REFERENCE_CLASS = "concrete"
# the design's names were defined here before the split into design.py; they stay importable from here
__all__ = [
    "StudyLayout",
    "VarianceComponents",
    "estimate_components",
    "layout_from_study",
    "layout_from_table",
    "minimum_detectable_effects",
    "power_text",
]


def _residual_sd(components: VarianceComponents, n_seeds: int) -> float:
    return float(np.sqrt(components.pair_sd**2 + components.seed_sd**2 / n_seeds))


def _bisect(power_at: Callable[[float], float], high: float, target: float) -> float:
    """Smallest effect with power_at(effect) >= target on [0, high] (doubling high first); NaN when unreachable."""
    for _ in range(12):
        if power_at(high) >= target:
            break
        high *= 2.0
    else:
        return float("nan")
    low = 0.0
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2.0
        low, high = (low, middle) if power_at(middle) >= target else (middle, high)
    return high


def _methods(layout, components, alpha, n_sims, rng) -> tuple[float, str]:
    methods = sorted(set(layout.model_method))
    subjects = sorted(set(layout.model_subject))
    cells = {(s, m): i for i, (m, s) in enumerate(zip(layout.model_method, layout.model_subject, strict=True))}
    complete = [s for s in subjects if all((s, m) in cells for m in methods)]
    k, s = len(methods), len(complete)
    if k < 2 or s < k:
        return float("nan"), f"needs >= 2 methods and >= {max(k, 2)} subjects with every method; has {k} and {s}"
    residual = _residual_sd(components, layout.n_seeds) / np.sqrt(max(layout.n_prompts, 1))
    # model means [sims, subjects, methods]; prompt effects are shared by every model and cancel in contrasts
    means = (
        rng.normal(0.0, components.model_sd, (n_sims, s, k))
        + rng.normal(0.0, components.subject_sd, (n_sims, s, 1))
        + rng.normal(0.0, residual, (n_sims, s, k))
    )
    spacing = np.arange(k) / (k - 1)
    critical = stats.f.ppf(1 - alpha, k - 1, s - k + 1)

    def power_at(effect: float) -> float:
        contrasts = (means + effect * spacing)[:, :, 1:] - (means + effect * spacing)[:, :, :1]  # [S, s, k-1]
        centre = contrasts.mean(axis=1)
        deviations = contrasts - centre[:, None, :]
        covariance = np.einsum("nsi,nsj->nij", deviations, deviations) / (s - 1)
        t2 = s * np.einsum("ni,ni->n", centre, np.linalg.solve(covariance, centre[..., None])[..., 0])
        f_value = t2 * (s - k + 1) / ((s - 1) * (k - 1))
        return float(np.mean(f_value > critical))

    scale = components.model_sd + components.subject_sd + residual
    return _bisect(
        power_at, max(scale, 1e-9), TARGET_POWER
    ), "largest method difference, the methods offset evenly from 0 to it"


def _abstractness(layout, components, alpha, n_sims, rng) -> tuple[float, str]:
    classes = np.asarray(layout.prompt_class)
    names = sorted(set(classes.tolist()))
    if not names:
        return float("nan"), "the prompts carry no abstractness labels"
    if REFERENCE_CLASS not in names or len(names) < 2 or classes.size <= len(names):
        return float("nan"), f"needs the class {REFERENCE_CLASS!r}, another class and more prompts than classes"
    codes = np.asarray([names.index(c) for c in classes])
    k, n = len(names), classes.size
    spread = np.sqrt(components.prompt_sd**2 + _residual_sd(components, layout.n_seeds) ** 2 / layout.n_models)
    effects = rng.normal(0.0, spread, (n_sims, n))  # model-centred prompt effects
    planted = (classes != REFERENCE_CLASS).astype(np.float64)
    one_hot = (codes[:, None] == np.arange(k)).astype(np.float64)  # [n, k]
    sizes = one_hot.sum(axis=0)
    critical = stats.f.ppf(1 - alpha, k - 1, n - k)

    def power_at(effect: float) -> float:
        values = effects + effect * planted
        between = np.sum((values @ one_hot) ** 2 / sizes, axis=1) - values.sum(axis=1) ** 2 / n
        total = np.sum((values - values.mean(axis=1, keepdims=True)) ** 2, axis=1)
        f_value = (between / (k - 1)) / ((total - between) / (n - k))
        return float(np.mean(f_value > critical))

    return _bisect(power_at, spread, TARGET_POWER), "added to every non-concrete prompt"


def _proximity(layout, components, alpha, n_sims, rng) -> tuple[float, str]:
    from cemaps.analysis.stats.semantic import domain_differences, subject_arrangements

    domains = np.asarray(layout.prompt_domain)
    if domains.size == 0:
        return float("nan"), "the prompts carry no domain labels"
    subject_names, subject_index = np.unique(np.asarray(layout.model_subject), return_inverse=True)
    model_domain = np.asarray([str(d) for d in layout.model_subject_domain])
    subject_domain = np.array([model_domain[subject_index == i][0] for i in range(subject_names.size)])
    if len(set(subject_domain.tolist())) < 2:
        return float("nan"), "needs subjects of >= 2 domains"
    names = np.unique(np.concatenate([domains, subject_domain]))
    prompt_codes, subject_codes = np.searchsorted(names, domains), np.searchsorted(names, subject_domain)
    arrangements, exact = subject_arrangements(subject_codes, 199, rng)
    smallest = 1.0 / len(arrangements) if exact else 1.0 / 200
    if smallest > alpha:
        return float("nan"), (
            f"{len(arrangements)} arrangements of {subject_names.size} subjects' domains: the smallest possible p "
            f"({smallest:.3g}) exceeds alpha {alpha:.3g}, so no effect can be detected"
        )
    m, n_domains = layout.n_models, names.size
    residual = _residual_sd(components, layout.n_seeds)
    values = (
        rng.normal(0.0, residual, (n_sims, m, domains.size))
        + rng.normal(0.0, components.domain_sd, (n_sims, m, n_domains))[:, :, prompt_codes]
    )
    null = domain_differences(values - values.mean(axis=1, keepdims=True), prompt_codes, n_domains)  # [S, M, D]
    planted = (model_domain[:, None] == domains[None, :]).astype(np.float64)
    signal = domain_differences(planted - planted.mean(axis=0), prompt_codes, n_domains)  # [M, D]
    rows = np.arange(m)[None, :]
    observed_codes = subject_codes[subject_index]
    null_stat = null[:, rows[0], observed_codes].sum(axis=1)  # [S]
    null_arranged = null[:, rows, arrangements[:, subject_index]].sum(axis=2)  # [S, B]
    signal_stat = signal[rows[0], observed_codes].sum()
    signal_arranged = signal[rows, arrangements[:, subject_index]].sum(axis=1)  # [B]

    def power_at(effect: float) -> float:
        stat = null_stat + effect * signal_stat
        arranged = null_arranged + effect * signal_arranged
        hits = (arranged >= stat[:, None] - 1e-12).sum(axis=1)
        p = hits / len(arrangements) if exact else (1 + hits) / (1 + len(arrangements))
        return float(np.mean(p <= alpha))

    return _bisect(power_at, residual + components.domain_sd, TARGET_POWER), (
        "added where the prompt's domain is the model's subject's"
    )


def _layers(layout, components, alpha, n_sims, rng) -> tuple[float, str, float]:
    m, p = layout.n_models, layout.n_prompts
    if m * p < 4:
        return float("nan"), "needs >= 4 (model, prompt) pairs", float("nan")
    residual = _residual_sd(components, layout.n_seeds)
    subject_codes = pd.factorize(pd.Series(layout.model_subject))[0]
    n_subjects = int(subject_codes.max()) + 1

    def draw() -> np.ndarray:
        return (
            rng.normal(0.0, components.prompt_sd, (n_sims, 1, p))
            + rng.normal(0.0, components.model_sd, (n_sims, m, 1))
            + rng.normal(0.0, components.subject_sd, (n_sims, n_subjects))[:, subject_codes][..., None]
            + rng.normal(0.0, residual, (n_sims, m, p))
        ).reshape(n_sims, m * p)

    disruption, shift = draw(), draw()

    def rho(effect: float) -> np.ndarray:
        ranks_y = stats.rankdata(disruption + effect * shift, axis=1)
        ranks_x = stats.rankdata(shift, axis=1)
        ranks_y -= ranks_y.mean(axis=1, keepdims=True)
        ranks_x -= ranks_x.mean(axis=1, keepdims=True)
        return np.sum(ranks_x * ranks_y, axis=1) / np.sqrt(np.sum(ranks_x**2, axis=1) * np.sum(ranks_y**2, axis=1))

    critical = stats.norm.ppf(1 - alpha / 2) * float(np.std(rho(0.0), ddof=1))
    beta = _bisect(lambda e: float(np.mean(np.abs(rho(e)) > critical)), 0.1, TARGET_POWER)
    at_mde = float(np.median(rho(beta))) if np.isfinite(beta) else float("nan")
    return beta, "beta in disruption + beta x shift (shift with the same components)", at_mde


def minimum_detectable_effects(
    layout: StudyLayout,
    components: VarianceComponents,
    *,
    family_size: Mapping[str, int] | None = None,
    n_sims: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """The MDE at 80% power of each question's test for ``layout`` under ``components``.

    Args:
        layout: the study's models and prompts.
        components: SDs in the metric's units.
        family_size: question -> number of tests corrected together (default 1 each); each test runs at
            alpha 0.05 / that number.
        n_sims: simulated studies per question (the layer question uses a quarter, min 100: ranks are costly).
        seed: seeds every draw.

    Returns:
        One row per question: question, test, effect (what the MDE is), mde (metric units; NaN when the
        design cannot test the question), mde_rho (layer linking: median Spearman rho at the MDE),
        alpha, power, n_sims, components (where the SDs came from), note.
    """
    check_positive_int(n_sims, "n_sims", minimum=20)
    family_size = dict(family_size or {})
    rows = []
    runners = {
        "methods": ("subject_hotelling", _methods),
        "abstractness": ("prompt_permutation_anova", _abstractness),
        "semantic_proximity": ("proximity_interaction", _proximity),
        "layer_linking": ("layer_spearman_perm", _layers),
    }
    for index, question in enumerate(QUESTIONS):
        test, runner = runners[question]
        alpha = ALPHA / max(1, int(family_size.get(question, 1)))
        rng = np.random.default_rng([seed, index])
        sims = max(100, n_sims // 4) if question == "layer_linking" else n_sims
        out = runner(layout, components, alpha, sims, rng)
        mde, effect = out[0], out[1]
        rows.append(
            dict(
                question=question,
                test=test,
                effect=effect if np.isfinite(mde) else "",
                mde=mde,
                mde_rho=out[2] if len(out) > 2 else float("nan"),
                alpha=alpha,
                power=TARGET_POWER,
                n_sims=sims,
                components=components.source,
                note="" if np.isfinite(mde) else effect,
            )
        )
    return pd.DataFrame(rows)


def power_text(config: Any, n_sims: int = 400) -> str:
    """Lines for ``cemaps capture --dry-run``: each question's MDE for the study's design under assumed components.

    Each question is corrected over its validated tests for the two metrics as the report does
    (methods 2, abstractness 4, semantic proximity 4; layer linking per layer, before correcting across layers).
    """
    layout = layout_from_study(config)
    if layout.n_models == 0:
        return "power: no personalized models in the study; nothing to compare"
    family = {"methods": 2, "abstractness": 4, "semantic_proximity": 4}
    table = minimum_detectable_effects(layout, VarianceComponents(), family_size=family, n_sims=n_sims)
    lines = [
        f"power (80%, simulated from this design: {layout.n_models} models, {layout.n_prompts} prompts, "
        f"{layout.n_seeds} seed(s); {VarianceComponents().source}):"
    ]
    for row in table.itertuples():
        if np.isfinite(row.mde):
            rho = f" (Spearman rho ~ {row.mde_rho:.2f})" if np.isfinite(row.mde_rho) else ""
            lines.append(f"  {row.question}: detects >= {row.mde:.3g}{rho} at alpha {row.alpha:.3g}, {row.effect}")
        else:
            lines.append(f"  {row.question}: no detectable effect: {row.note}")
    return "\n".join(lines)
