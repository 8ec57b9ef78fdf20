"""Issue 22, kind 2: no string from a results folder can run script in the report or escape its folder."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from hostile_strings import HOSTILE

from cemaps.report.disruption_figures import prompt_label
from cemaps.report.html import CSP
from cemaps.report.html_cem import TOOLTIP_SCRIPT
from cemaps.report.safe_html import script_hash

SAFE_ID = re.compile(r"^[A-Za-z0-9_-]+$")


class Elements(HTMLParser):
    """Every start tag with its attributes, and the text of each script element."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self._in_script: dict[str, str | None] | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag == "script":
            self._in_script = dict(attrs)
            self.scripts.append((self._in_script, ""))

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = None

    def handle_data(self, data):
        if self._in_script is not None:
            attrs, text = self.scripts[-1]
            self.scripts[-1] = (attrs, text + data)
        else:
            self.text.append(data)


def test_hostile_strings_are_text_never_markup(hostile_report_path, hostile_results_dir):
    page = Elements()
    page.feed(hostile_report_path.read_text(encoding="utf-8"))
    assert "iframe" not in {tag for tag, _ in page.tags}
    handlers = [(tag, name) for tag, attrs in page.tags for name in attrs if name.lower().startswith("on")]
    assert handlers == []
    for tag, attrs in page.tags:
        if "id" in attrs:
            assert SAFE_ID.match(attrs["id"]), (tag, attrs["id"])
        if "href" in attrs:
            assert not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", attrs["href"]), attrs["href"]  # no scheme
        if tag == "img":
            assert attrs["src"].startswith("data:image/png;base64,")
    executable = [text for attrs, text in page.scripts if attrs.get("type") != "application/json"]
    assert executable == [TOOLTIP_SCRIPT]
    text = "".join(page.text)
    for shown in (HOSTILE["alignment_drop"], HOSTILE["dreambooth-alice"], HOSTILE["animals"]):
        assert shown in text  # shown to the reader, literally
    # the CEM labels a prompt by its text, cut to 28 characters: the hostile text is a label, literally
    assert prompt_label(HOSTILE["a photo of a robot"]) in text


def test_the_policy_allows_only_the_page_script(hostile_report_path):
    assert "'unsafe-inline'" not in CSP.split("script-src")[1]
    assert f"script-src {script_hash(TOOLTIP_SCRIPT)}" in CSP
    assert f'content="{CSP}"' in hostile_report_path.read_text(encoding="utf-8")


def test_figure_files_are_named_from_slugs(hostile_report_path):
    names = [p.name for p in (hostile_report_path.parent / "figures").iterdir()]
    assert names and all(re.match(r"^[A-Za-z0-9_.-]+$", name) for name in names)
    assert any(name.startswith("cem_m-img-src-x-onerror") for name in names)
