"""The HTML report: every section, self-contained (nothing fetched), honest about the tiny model."""

from __future__ import annotations

import base64
import json
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cemaps.errors import ConfigError
from cemaps.report import load_results, write_report
from cemaps.report.html import tiny_model_banner
from cemaps.report.html_cem import cem_svg, json_script
from cemaps.report.html_tables import summary_html

SECTIONS = ("cem", "methods", "abstractness", "semantic_proximity", "layer_linking", "clustering", "provenance", "data")


class LinkCollector(HTMLParser):
    """Every src/href attribute, <img> and element id of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []
        self.ids: set[str] = set()
        self.images: list[str] = []
        self.scripts_with_src = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for name in ("src", "href", "xlink:href"):
            if name in attrs:
                self.links.append((tag, name, attrs[name]))
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        if tag in ("script", "link") and ("src" in attrs or attrs.get("rel") == "stylesheet"):
            self.scripts_with_src += 1


@pytest.fixture(scope="module")
def page(report_path) -> tuple[str, LinkCollector]:
    text = report_path.read_text(encoding="utf-8")
    parser = LinkCollector()
    parser.feed(text)
    return text, parser


def test_report_has_every_section_with_tests_and_figures(page):
    text, parser = page
    assert set(SECTIONS) <= parser.ids
    for question in ("methods", "abstractness", "semantic_proximity", "layer_linking", "clustering"):
        section = text.split(f'<section id="{question}">')[1].split("</section>")[0]
        assert "<h3>Tests: alignment_drop</h3>" in section and "<h3>Tests: image_drift</h3>" in section
        assert '<table class="tests">' in section or question == "clustering", question  # ARI tables there
        assert "<figure" in section, question
    methods = text.split('<section id="methods">')[1].split("</section>")[0]
    assert "<td>subject_hotelling</td>" in methods and "pairwise" in methods
    assert "<td>kruskal</td>" in text and "<td>prompt_permutation_anova</td>" in text and "mixedlm" not in text
    # structural zeros in words: TI on the fixture's first prompt, both seeds
    assert (
        '<p class="structural-zeros">textual_inversion: 3 of 36 (model, prompt) pairs are structural zeros' in methods
    )
    cem = text.split('<section id="cem">')[1].split("</section>")[0]
    assert "Structural zeros: textual_inversion-alice (textual_inversion): 2 of 24 records" in cem
    assert "by construction" in cem
    layers = text.split('<section id="layer_linking">')[1].split("</section>")[0]
    assert "<td>ridge_cv_r2</td>" in layers and "<caption>layers</caption>" in layers
    clustering = text.split('<section id="clustering">')[1].split("</section>")[0]
    assert "<caption>prompts.agreement</caption>" in clustering and "<th>p_ari</th>" in clustering


def test_report_is_self_contained(page, report_path):
    text, parser = page
    remote = [link for link in parser.links if re.match(r"\s*(https?:)?//", link[2], re.IGNORECASE)]
    assert remote == []
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*https?://""", text, re.IGNORECASE)
    assert parser.scripts_with_src == 0  # scripts and styles are inline
    assert "default-src 'none'" in text  # the page may not fetch anything
    assert "@import" not in text and "url(http" not in text
    assert len(parser.images) >= 15
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_data_and_figure_links_are_relative_and_exist(page, report_path):
    _, parser = page
    files = [href for tag, name, href in parser.links if tag == "a" and not href.startswith("#")]
    assert any(href.endswith("disruption.csv") for href in files)
    assert any(href.endswith("summary.json") for href in files)
    assert any(href.startswith("figures/") and href.endswith(".svg") for href in files)
    for href in files:
        assert not Path(href).is_absolute()
        assert (report_path.parent / href).resolve().is_file(), href


def test_tiny_model_is_stated(page, results_dir, tmp_path):
    text, _ = page
    assert "validates the pipeline end to end; it is not evidence about SD v1.5" in text
    real = Path(shutil.copytree(results_dir, tmp_path / "real"))
    manifest = json.loads((real / "manifest.json").read_text())
    manifest["provenance"]["base"]["model_id"] = "runwayml/stable-diffusion-v1-5"
    (real / "manifest.json").write_text(json.dumps(manifest))
    assert tiny_model_banner(load_results(real)) == ""


def test_provenance_lists_packages_models_and_settings(page):
    text, _ = page
    provenance = text.split('<section id="provenance">')[1].split("</section>")[0]
    assert "<td>diffusers</td><td>0.42.1</td>" in provenance
    assert "textual_inversion-ukiyoe" in provenance
    assert "guidance_scale" in provenance


def test_interactive_cem_carries_prompt_texts(page, results_dir):
    text, _ = page
    data = json.loads(
        re.search(r'<script type="application/json" id="cem-data-alignment_drop">(.*?)</script>', text).group(1)
    )
    results = load_results(results_dir)
    cem = results.cems["alignment_drop"]
    assert len(data["values"]) == cem.shape[0] and len(data["values"][0]) == cem.shape[1]
    prompts = results.tables["prompts"].set_index("prompt_id")
    for prompt in data["prompts"]:
        assert prompt["text"] == prompts.loc[prompt["prompt_id"], "text"]
    assert text.count('class="cell"') == 2 * cem.size  # both metrics


def test_cem_svg_escapes_text_and_handles_missing_values():
    import numpy as np
    import pandas as pd

    cem = pd.DataFrame(
        [[np.nan, 1.0]],
        index=pd.MultiIndex.from_tuples([("lora", "<b>", "m")]),
        columns=pd.MultiIndex.from_tuples([("concrete", "x", "p0"), ("abstract", "y", "p1")]),
    )
    svg, data = cem_svg(cem, "m", "cem-m", {"p0": "</script><script>alert(1)</script>"})
    assert "<b>" not in svg and "&lt;b&gt;" in svg
    assert data["values"][0][1] is None  # sorted columns put 'abstract' first; the NaN is p0's
    assert "</script><script>" not in json_script("cem-m", data)


def test_cem_svg_labels_each_prompt_by_its_text_where_it_fits():
    import pandas as pd

    from cemaps.report.disruption_figures import prompt_label

    long = "an abstract composition of harmony & <freedom> at dawn"
    cem = pd.DataFrame(
        [[0.1, 0.2, 0.3]],
        index=pd.MultiIndex.from_tuples([("lora", "face1", "m")]),
        columns=pd.MultiIndex.from_tuples([("abstract", "x", "p0"), ("abstract", "x", "p1"), ("concrete", "y", "p2")]),
    )
    svg, _ = cem_svg(cem, "image_drift", "cem-i", {"p0": long, "p1": "a photo of a cat"})
    parser = SvgText()
    parser.feed(svg)
    assert parser.prompt_labels == [prompt_label(long), "a photo of a cat", "p2"]  # no text: the id
    assert prompt_label(long) == "an abstract composition of\u2026"
    assert "&lt;freedom&gt;" in svg and "<freedom>" not in svg  # the whole text, escaped, as the label's title
    assert parser.titles[-3:] == [long, "a photo of a cat", "p2"]
    many = pd.DataFrame(
        [[0.0] * 200],
        index=cem.index,
        columns=pd.MultiIndex.from_tuples([("concrete", "y", f"p{i:03d}") for i in range(200)]),
    )
    svg, _ = cem_svg(many, "image_drift", "cem-i", {f"p{i:03d}": f"prompt {i}" for i in range(200)})
    assert 'class="label prompt"' not in svg  # 4.5 px columns: the groups only, the text in the tooltip


class SvgText(HTMLParser):
    """The text of every prompt label and every title of an SVG fragment."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.prompt_labels: list[str] = []
        self.titles: list[str] = []
        self._into: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "text" and dict(attrs).get("class") == "label prompt":
            self._into = self.prompt_labels
            self._into.append("")
        elif tag == "title":
            self._into = self.titles
            self._into.append("")

    def handle_endtag(self, tag):
        if tag in ("text", "title"):
            self._into = None

    def handle_data(self, data):
        if self._into is not None:
            self._into[-1] += data


def test_cem_svg_of_a_signed_metric_is_centred_at_zero_with_its_unit():
    import pandas as pd
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    cem = pd.DataFrame(
        [[-46.0, 0.0, 51.0]],
        index=pd.MultiIndex.from_tuples([("lora", "face1", "m")]),
        columns=pd.MultiIndex.from_tuples([("abstract", "x", "p0"), ("abstract", "x", "p1"), ("concrete", "y", "p2")]),
    )
    svg, _ = cem_svg(cem, "alignment_drop", "cem-a", {})
    assert f'fill="{to_hex(colormaps["PuOr_r"](0.5))}"' in svg  # 0 is the diverging map's centre colour
    assert ">-51<" in svg and ">51<" in svg  # a symmetric scale
    assert "alignment drop (CLIPScore points, base - personalized)" in svg


def test_summary_html_renders_unknown_structures_generically():
    section = {
        "new_family": {
            "test": "anova",
            "statistic": 2.0,
            "p": 0.5,
            "effect_size": None,
            "effect_size_name": "eta",
            "n": 9,
            "method": "scipy.stats.f_oneway",
            "extra": {"reason": "demo"},
        },
        "table": [{"a": 1, "b": 0.123456}],
        "note": "text",
        "numbers": [1, 2, 3],
    }
    html = summary_html(section)
    assert "<td>anova</td>" in html and "eta = n/a" in html and "demo" in html
    assert "<caption>table</caption>" in html and "0.1235" in html
    assert "<dt>note</dt><dd>text</dd>" in html and "<dd>1, 2, 3</dd>" in html


def test_sparse_results_still_make_a_report(sparse_results_dir, tmp_path):
    (sparse_results_dir / "summary.json").unlink()
    for name in ("attention_shift.csv", "disruption.csv", "disruption_by_prompt.csv"):
        (sparse_results_dir / name).unlink()
    path = write_report(sparse_results_dir, tmp_path / "out")
    text = path.read_text(encoding="utf-8")
    assert 'data-figure="weight_delta_layers"' in text and "weight_deltas.csv is absent" in text
    assert "summary.json has no methods results" in text
    assert "summary.json is absent" in text  # listed under the data files not found


def test_summary_sections_per_metric_or_flat(results_dir):
    results = load_results(results_dir)
    assert results.section("methods", "image_drift")["value"] == "image_drift"
    flat = type(results)(results.folder, results.manifest, {"methods": {"value": "alignment_drop", "x": 1}}, {}, {}, {})
    assert flat.section("methods", "alignment_drop")["x"] == 1
    assert flat.section("methods", "image_drift") is None
    assert flat.section("clustering") is None


def test_load_results_refuses_bad_folders(tmp_path):
    with pytest.raises(ConfigError, match=r"no such results folder"):
        load_results(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"manifest.json: missing; expected a results folder"):
        load_results(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"manifest.json: not valid JSON"):
        load_results(tmp_path)
    (tmp_path / "manifest.json").write_text("[]")
    with pytest.raises(ConfigError, match=r"manifest.json: JSON list; expected an object"):
        load_results(tmp_path)
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "cem_x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match=r"cem_x.csv: not a CEM table"):
        load_results(tmp_path)


def test_only_tests_with_a_validated_null_rate_are_bold():
    from cemaps.report.html_tables import test_rows_html

    def test(name, p, validated):
        extra = {"null_rate_validated": True, "p_holm_question": min(1.0, 3 * p)} if validated else {}
        return {
            "test": name,
            "statistic": 1.0,
            "p": p,
            "effect_size": 0.1,
            "effect_size_name": "e",
            "n": 9,
            "method": "m",
            "extra": extra,
        }

    html = test_rows_html(
        [
            ("a", test("valid_small", 0.001, True)),
            ("b", test("unchecked_small", 0.0001, False)),
            ("c", test("valid_large", 0.5, True)),
        ]
    )
    rows = html.split("<tr>")[2:]
    assert '<td class="sig">0.001 <small>(Holm over the question: 0.003)</small></td>' in rows[0]
    assert 'class="sig"' not in rows[1] and "(null rate not validated)" in rows[1]
    assert 'class="sig"' not in rows[2] and "not validated" not in rows[2]


def test_findings_are_listed_under_the_question_title():
    from cemaps.report.html import findings_html

    html = findings_html({"findings": ["alignment_drop: the data do not show <that> methods differ."]})
    assert html.startswith('<div class="findings"><h3>Findings</h3><ul><li>alignment_drop: the data')
    assert "&lt;that&gt;" in html and findings_html({"alignment_drop": {}}) == ""
