"""Each question's findings as sentences: the effect with its interval, whether it survives Holm, the MDE.

A sentence claims a difference only when the test's p survives Holm's correction across its
question's tests and metrics (``p_holm_question`` < 0.05); otherwise it says that the data do not
show one, and what size of effect the design could have found (the MDE at 80% power).

Example:
    >>> test = {"test": "subject_hotelling", "p": 0.2, "extra": {"p_holm_question": 0.4, "computable": True}}
    >>> verdict(test)
    'p = 0.2, Holm-adjusted over the question 0.4: not significant'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cemaps.analysis.stats.common import P_HOLM_QUESTION

ALPHA = 0.05


def _number(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) else "n/a"


def verdict(test: Mapping[str, Any]) -> str:
    """'p = x, Holm-adjusted over the question y: significant / not significant' for a test dict."""
    adjusted = (test.get("extra") or {}).get(P_HOLM_QUESTION)
    survives = isinstance(adjusted, (int, float)) and adjusted < ALPHA
    return (
        f"p = {_number(test.get('p'))}, Holm-adjusted over the question {_number(adjusted)}: "
        f"{'significant' if survives else 'not significant'}"
    )


def survives(test: Mapping[str, Any] | None) -> bool:
    adjusted = ((test or {}).get("extra") or {}).get(P_HOLM_QUESTION)
    return isinstance(adjusted, (int, float)) and adjusted < ALPHA


def _mde(power: Mapping[str, Any], metric: str, question: str) -> str:
    entry = power.get(metric) or {}
    rows = [r for r in entry.get("mde") or [] if r.get("question") == question]
    if not rows:
        return f"No minimum detectable effect: {entry.get('not_computed', 'not computed')}."
    row = rows[0]
    if not isinstance(row.get("mde"), (int, float)):
        return f"This design cannot detect an effect here: {row.get('note')}."
    extra = f" (a layer link of Spearman rho about {_number(row['mde_rho'])})" if question == "layer_linking" else ""
    return (
        f"This design detects, with 80% power at alpha {_number(row['alpha'])}, an effect >= {_number(row['mde'])}"
        f"{extra} ({row['effect']})."
    )


def _methods(result: Mapping[str, Any], metric: str) -> str:
    test = result.get("subject_test") or {}
    excluded = result.get("excluded_structural_zero_models") or []
    left_out = f" {len(excluded)} all-structural-zero model(s) left out." if excluded else ""
    if test.get("p") is None:
        return f"{metric}: the method test is not computable ({(test.get('extra') or {}).get('reason')}).{left_out}"
    pairs = [r for r in result.get("pairwise") or [] if isinstance(r.get("mean_difference"), (int, float))]
    largest = max(pairs, key=lambda r: abs(r["mean_difference"]), default=None)
    difference = (
        f" Largest difference {largest['method_a']} - {largest['method_b']} = {_number(largest['mean_difference'])}"
        f" [95% CI {_number(largest.get('ci_low'))}, {_number(largest.get('ci_high'))}] over {largest['n']} subjects."
        if largest
        else ""
    )
    claim = "methods differ" if survives(test) else "the data do not show that methods differ"
    return f"{metric}: {claim} (Hotelling's T^2 across subjects, {verdict(test)}).{difference}{left_out}"


def _abstractness(result: Mapping[str, Any], metric: str) -> str:
    anova = (result.get("prompt_anova") or {}).get("test") or {}
    kruskal = result.get("kruskal") or {}
    effects = (result.get("prompt_anova") or {}).get("class_effects") or []
    said = "; ".join(
        f"{e['term']} - concrete = {_number(e['estimate'])} [95% CI {_number(e.get('ci_low'))}, "
        f"{_number(e.get('ci_high'))}] ({e['n_prompts']} prompts)"
        for e in effects
    )
    any_survives = survives(anova) or survives(kruskal)
    claim = "abstractness classes differ" if any_survives else "the data do not show that abstractness classes differ"
    return (
        f"{metric}: {claim} (permutation ANOVA {verdict(anova)}; Kruskal-Wallis {verdict(kruskal)}). "
        f"Model-centred effects: {said or 'n/a'}."
    )


def _proximity(result: Mapping[str, Any], metric: str) -> str:
    test = result.get("combined") or {}
    extra = test.get("extra") or {}
    if test.get("p") is None:
        return f"{metric}: the proximity test is not computable ({extra.get('reason')})."
    claim = (
        "subjects' models disrupt their own domain more than other models do"
        if survives(test)
        else "the data do not show that subjects' models disrupt their own domain more than other models do"
    )
    near_one = (
        " A p near 1 says the own-domain difference fell below nearly every arrangement; it is not evidence of "
        "no proximity effect."
        if isinstance(test.get("p"), (int, float)) and test["p"] > 0.9
        else ""
    )
    return (
        f"{metric}: {claim} (interaction on prompt-centred values, {verdict(test)}; smallest possible p "
        f"{_number(extra.get('smallest_possible_p'))}). Mean own-domain excess = {_number(test.get('effect_size'))} "
        f"[95% CI {_number(extra.get('ci_low'))}, {_number(extra.get('ci_high'))}].{near_one}"
    )


def _layers(result: Mapping[str, Any], metric: str) -> str:
    rows = [r for r in result.get("layers") or [] if isinstance(r.get("rho"), (int, float))]
    if not rows:
        return f"{metric}: no layer correlation computable."
    kept = [r for r in rows if isinstance(r.get(P_HOLM_QUESTION), (int, float)) and r[P_HOLM_QUESTION] < ALPHA]
    strongest = max(rows, key=lambda r: abs(r["rho"]))
    zeros = (result.get("pairs") or {}).get("pairs_structural_zero_dropped", 0)
    return (
        f"{metric}: {len(kept)} of {len(rows)} layers' Spearman rho survive Holm over layers and metrics "
        f"(prompt-permutation p); largest |rho| {_number(strongest['rho'])} at {strongest['layer']} over "
        f"{strongest.get('n')} pairs ({zeros} structural-zero pairs left out)."
    )


def _clustering(result: Mapping[str, Any], metric: str) -> str:
    parts = []
    for what in ("prompts", "models"):
        entry = result.get(what) or {}
        apart = len(entry.get("set_apart") or [])
        if entry.get("not_computed"):
            parts.append(f"{what}: {entry['not_computed']}")
            continue
        agreement = "; ".join(
            f"{r['label']} ARI {_number(r.get('ari'))} (permutation p {_number(r.get('p_ari'))}, conservative)"
            for r in entry.get("agreement") or []
            if r.get("computable")
        )
        parts.append(f"{what}: {agreement or 'no label to compare'}; {apart} constant profile(s) set apart")
    return f"{metric}: " + ". ".join(parts) + ". Descriptive: nothing is bolded."


WRITERS = {
    "methods": _methods,
    "abstractness": _abstractness,
    "semantic_proximity": _proximity,
    "layer_linking": _layers,
    "clustering": _clustering,
}


def findings(question: str, section: Mapping[str, Any], power: Mapping[str, Any], metrics: Sequence[str]) -> list[str]:
    """One or two sentences per metric for ``question``: the finding, then the design's MDE."""
    sentences = []
    for metric in metrics:
        result = section.get(metric) or {}
        if "not_computed" in result:
            sentences.append(f"{metric}: not computed ({result['not_computed']}).")
            continue
        sentences.append(WRITERS[question](_plain(result), metric))
        if question != "clustering":
            sentences.append(_mde(_plain(power), metric, question))
    return sentences


def _plain(value: Any) -> Any:
    """Results as plain JSON (records instead of DataFrames), as summary.json holds them."""
    from cemaps.analysis.stats.common import to_jsonable

    return to_jsonable(value)
