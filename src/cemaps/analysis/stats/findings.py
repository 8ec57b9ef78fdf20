"""Each question's findings as sentences: the effect with its interval, whether it survives Holm, the MDE.

A sentence claims a difference only when the test's p survives Holm's correction across its
question's tests and metrics (``p_holm_question`` < 0.05); otherwise it says that the data do not
show one. The second sentence sets the design against what it found: "this design detects >= X
(80% power); it found Y [95% CI]" (issue 21, item 6). Wording that a reader could take for a
claim the numbers do not carry is avoided on purpose (issue 21, item 5):

- intervals not corrected for the question's several tests are called *unadjusted*, and an
  unadjusted interval that excludes 0 beside a test that does not survive is said to be no finding;
- a one-sided p near 1 is read as "the other direction", never as "no effect";
- an interval the design cannot bound (few arrangements) is written unbounded, not "n/a";
- the largest of several layers' correlations is named a pick, not an estimate.

Example:
    >>> test = {"test": "subject_hotelling", "p": 0.2, "extra": {"p_holm_question": 0.4, "computable": True}}
    >>> verdict(test)
    'p = 0.2, Holm-adjusted over the question 0.4: not significant'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cemaps.analysis.stats.common import P_HOLM_QUESTION, to_jsonable

ALPHA = 0.05
NEAR_ONE = 0.9  # a one-sided p above this is read aloud as "the other direction"


def _number(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def verdict(test: Mapping[str, Any]) -> str:
    """'p = x, Holm-adjusted over the question y: significant / not significant' for a test dict."""
    adjusted = (test.get("extra") or {}).get(P_HOLM_QUESTION)
    return (
        f"p = {_number(test.get('p'))}, Holm-adjusted over the question {_number(adjusted)}: "
        f"{'significant' if survives(test) else 'not significant'}"
    )


def survives(test: Mapping[str, Any] | None) -> bool:
    """True when the test's p, Holm-adjusted over its question, is below 0.05 (the report's one rule)."""
    adjusted = ((test or {}).get("extra") or {}).get(P_HOLM_QUESTION)
    return isinstance(adjusted, (int, float)) and adjusted < ALPHA


def interval(low: Any, high: Any, unbounded: Sequence[bool] = (False, False)) -> str:
    """'[95% CI low, high]'; an end the design cannot bound is -inf / +inf (JSON holds it as None)."""
    ends = [
        "-inf" if low is None and unbounded[0] else _number(low),
        "+inf" if high is None and unbounded[1] else _number(high),
    ]
    return f"[95% CI {ends[0]}, {ends[1]}]"


def excludes_zero(low: Any, high: Any) -> bool:
    numbers = isinstance(low, (int, float)) and isinstance(high, (int, float))
    return numbers and (low > 0 or high < 0)


def _mde(power: Mapping[str, Any], metric: str, question: str, found: str) -> str:
    entry = power.get(metric) or {}
    rows = [r for r in entry.get("mde") or [] if r.get("question") == question]
    if not rows:
        return f"No minimum detectable effect ({entry.get('not_computed', 'not computed')}); it found {found}."
    row = rows[0]
    if not isinstance(row.get("mde"), (int, float)):
        return f"This design cannot detect an effect here ({row.get('note')}); it found {found}."
    extra = f" (a layer link of Spearman rho about {_number(row['mde_rho'])})" if question == "layer_linking" else ""
    return (
        f"This design detects, with 80% power at alpha {_number(row['alpha'])}, an effect >= {_number(row['mde'])}"
        f"{extra} ({row['effect']}); it found {found}."
    )


def _methods(result: Mapping[str, Any], metric: str) -> tuple[str, str]:
    test = result.get("subject_test") or {}
    excluded = result.get("excluded_structural_zero_models") or []
    left_out = f" {len(excluded)} all-structural-zero model(s) left out." if excluded else ""
    pairs = [r for r in result.get("pairwise") or [] if isinstance(r.get("mean_difference"), (int, float))]
    largest = max(pairs, key=lambda r: abs(r["mean_difference"]), default=None)
    found = (
        f"{largest['method_a']} - {largest['method_b']} = {_number(largest['mean_difference'])} "
        f"{interval(largest.get('ci_low'), largest.get('ci_high'))}"
        if largest
        else "no method difference it could compute"
    )
    difference = f" Largest difference {found} over {largest['n']} subjects." if largest else ""
    if test.get("p") is None:
        reason = (test.get("extra") or {}).get("reason")
        return f"{metric}: the method test is not computable ({reason}).{difference}{left_out}", found
    claim = "methods differ" if survives(test) else "the data do not show that methods differ"
    return f"{metric}: {claim} (Hotelling's T^2 across subjects, {verdict(test)}).{difference}{left_out}", found


def _abstractness(result: Mapping[str, Any], metric: str) -> tuple[str, str]:
    anova = (result.get("prompt_anova") or {}).get("test") or {}
    kruskal = result.get("kruskal") or {}
    effects = (result.get("prompt_anova") or {}).get("class_effects") or []
    any_survives = survives(anova) or survives(kruskal)
    said = "; ".join(
        f"{e['term']} - concrete = {_number(e['estimate'])} {interval(e.get('ci_low'), e.get('ci_high'))} "
        f"({e['n_prompts']} prompts)"
        for e in effects
    )
    said = f" Model-centred class effects (intervals unadjusted for the question's tests): {said}." if said else ""
    if not any_survives and any(excludes_zero(e.get("ci_low"), e.get("ci_high")) for e in effects):
        said += " An unadjusted interval that excludes 0 while no test survives Holm is not a finding."
    numbers = [e for e in effects if isinstance(e.get("estimate"), (int, float))]
    largest = max(numbers, key=lambda e: abs(e["estimate"]), default=None)
    found = (
        f"{largest['term']} - concrete = {_number(largest['estimate'])} "
        f"{interval(largest.get('ci_low'), largest.get('ci_high'))}, the largest class effect"
        if largest
        else "no class effect it could compute"
    )
    claim = "abstractness classes differ" if any_survives else "the data do not show that abstractness classes differ"
    return f"{metric}: {claim} (permutation ANOVA {verdict(anova)}; Kruskal-Wallis {verdict(kruskal)}).{said}", found


def _near_one(test: Mapping[str, Any], reading: str) -> str:
    p = test.get("p")
    if isinstance(p, (int, float)) and p > NEAR_ONE:
        return f" Its p near 1 says {reading}; it is not evidence of no proximity effect."
    return ""


def _proximity(result: Mapping[str, Any], metric: str) -> tuple[str, str]:
    test = result.get("combined") or {}
    extra = test.get("extra") or {}
    unbounded = (bool(extra.get("ci_low_unbounded")), bool(extra.get("ci_high_unbounded")))
    found = f"{_number(test.get('effect_size'))} {interval(extra.get('ci_low'), extra.get('ci_high'), unbounded)}"
    excess = f" Own-domain excess = {found}"
    if all(unbounded):
        excess += f" (unbounded: {extra.get('n_arrangements')} arrangements of the subjects' domains cannot bound it)"
    excess += "."
    if test.get("p") is None:
        sentence = f"{metric}: the proximity test is not computable ({extra.get('reason')})."
        excess = ""
    else:
        claim = (
            "subjects' models disrupt their own domain more than other models do"
            if survives(test)
            else "the data do not show that subjects' models disrupt their own domain more than other models do"
        )
        sentence = (
            f"{metric}: {claim} (interaction on prompt-centred values, {verdict(test)}; smallest possible p "
            f"{_number(extra.get('smallest_possible_p'))}).{excess}"
            + _near_one(test, "the models disrupted their own domain less than the other models did")
        )
    similarity = result.get("similarity") or {}
    if similarity.get("p") is not None:
        link = (
            "closer prompts are more disrupted"
            if survives(similarity)
            else "the data do not show that closer prompts are more disrupted"
        )
        sentence += (
            f" Text similarity: {link} (prompt-centred Spearman rho = {_number(similarity.get('statistic'))}, "
            f"one-sided {verdict(similarity)})." + _near_one(similarity, "closer prompts were disrupted less")
        )
    return sentence, f"an own-domain excess of {found}"


def _layers(result: Mapping[str, Any], metric: str) -> tuple[str, str]:
    rows = [r for r in result.get("layers") or [] if isinstance(r.get("rho"), (int, float))]
    if not rows:
        return f"{metric}: no layer correlation computable.", "no layer correlation"
    kept = [r for r in rows if isinstance(r.get(P_HOLM_QUESTION), (int, float)) and r[P_HOLM_QUESTION] < ALPHA]
    strongest = max(rows, key=lambda r: abs(r["rho"]))
    zeros = (result.get("pairs") or {}).get("pairs_structural_zero_dropped", 0)
    named = ", ".join(f"{r['layer']} (rho {_number(r['rho'])}, Holm {_number(r[P_HOLM_QUESTION])})" for r in kept)
    found = (
        f"a largest |rho| of {_number(strongest['rho'])} at {strongest['layer']}, the pick of {len(rows)} layers "
        "(the largest of several is no estimate of any one: no interval)"
    )
    sentence = (
        f"{metric}: {len(kept)} of {len(rows)} layers' Spearman rho survive Holm over layers and metrics "
        f"(prompt-permutation p{'; ' + named if named else ''}), over {strongest.get('n')} pairs ({zeros} "
        "structural-zero pairs left out)."
    )
    return sentence, found


def _clustering(result: Mapping[str, Any], metric: str) -> tuple[str, str]:
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
    return f"{metric}: " + ". ".join(parts) + ". Descriptive: nothing is bolded.", ""


WRITERS = {
    "methods": _methods,
    "abstractness": _abstractness,
    "semantic_proximity": _proximity,
    "layer_linking": _layers,
    "clustering": _clustering,
}


def findings(question: str, section: Mapping[str, Any], power: Mapping[str, Any], metrics: Sequence[str]) -> list[str]:
    """Two sentences per metric for ``question`` (one for clustering): the finding, then the design's MDE
    beside what it found ("this design detects >= X; it found Y [95% CI]")."""
    sentences = []
    for metric in metrics:
        result = section.get(metric) or {}
        if "not_computed" in result:
            sentences.append(f"{metric}: not computed ({result['not_computed']}).")
            continue
        sentence, found = WRITERS[question](to_jsonable(result), metric)
        sentences.append(sentence)
        if question != "clustering":
            sentences.append(_mde(to_jsonable(power), metric, question, found))
    return sentences
