"""``cemaps capture --probe package.module:Class`` (issue 25): a user probe from the command line,
stored beside the cross-attention maps; a bad spec is one line naming it, before any model loads."""

from __future__ import annotations

import textwrap

import pytest
from cli_helpers import SMALL, assert_refused, write

from cemaps.probes.loading import load_probe
from cemaps.store import open_store

EXAMPLE = "cemaps.probes.examples:OutputNormProbe"
LAYER = "mid_block.attentions.0.transformer_blocks.0.attn2"


def test_the_shipped_example_probe_is_captured_and_stored(cli, tmp_path):
    config = write(tmp_path, SMALL)
    code, _, err = cli("capture", "-c", config, "--store", tmp_path / "s.h5", "--probe", EXAMPLE, "-q")
    assert code == 0, err
    with open_store(tmp_path / "s.h5") as store:
        assert store.settings["probes"] == ["cross_attention", "output_norm"]
        norms = store.read_one(f"output_norm/{LAYER}", 0)
        assert store.axes(f"output_norm/{LAYER}") == ("step", "half")
        assert norms.shape == (3, 2) and (norms > 0).all()  # 2 PNDM steps = 3 UNet calls; uncond and cond


def test_a_probe_module_in_the_current_directory_is_found(tmp_path, monkeypatch):
    (tmp_path / "my_probes.py").write_text(
        textwrap.dedent(
            """
            class NothingProbe:
                name = "nothing"
                def attach(self, pipe, context):
                    return []
                def collect(self, context):
                    return [{} for g in context.generations for _ in range(g.batch_size)]
            """
        )
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path.parent))  # the cwd itself is not on sys.path beforehand
    assert load_probe("my_probes:NothingProbe").name == "nothing"


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("OutputNormProbe", "expected package.module:Class"),
        ("cemaps.probes.examples:", "expected package.module:Class"),
        ("no_such_module_xyz:Probe", "cannot import 'no_such_module_xyz'"),
        ("cemaps.probes.examples:NoSuchProbe", "has no 'NoSuchProbe'"),
        ("collections:OrderedDict", "OrderedDict is not a probe (lacks name, attach, collect)"),
        ("fractions:Fraction", "Fraction is not a probe"),
        ("pathlib:PurePath", "PurePath is not a probe"),
        ("cemaps.probes.cross_attention:CrossAttentionProbe", "probe name 'cross_attention' is already taken"),
    ],
)
def test_a_bad_probe_is_refused_in_one_line_before_anything_is_written(cli, tmp_path, spec, fragment):
    config = write(tmp_path, SMALL)
    code, _, err = cli("capture", "-c", config, "--store", tmp_path / "s.h5", "--probe", spec, "-q")
    assert_refused(code, err, f"--probe {spec!r}", fragment)
    assert not (tmp_path / "s.h5").exists()


def test_a_failing_constructor_and_a_repeated_probe_are_named(cli, tmp_path):
    config = write(tmp_path, SMALL)
    code, _, err = cli("capture", "-c", config, "--probe", "json:JSONDecodeError", "-q")
    assert_refused(code, err, "--probe 'json:JSONDecodeError'", "JSONDecodeError() failed (TypeError:")
    code, _, err = cli("capture", "-c", config, "--probe", EXAMPLE, "--probe", EXAMPLE, "-q")
    assert_refused(code, err, "probe name 'output_norm' is already taken")
