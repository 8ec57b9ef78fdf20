"""Issue 13, kind 6: the CLI prints user text literally: brackets in paths, ids and shapes
are not taken for rich markup."""

from __future__ import annotations

import pytest
from cli_helpers import SMALL, assert_refused, snapshot, write


@pytest.mark.parametrize("name", ["dir [v2]/nope.h5", "[bold]x[/bold].h5", "runs/[red]/s.h5"])
def test_inspect_names_the_path_as_typed(cli, tmp_path, name):
    code, _, err = cli("inspect", tmp_path / name)
    assert_refused(code, err, str(tmp_path / name))


def test_a_shape_in_a_message_survives(cli, tmp_path):
    """The issue's example: "expected [32] or [n_vectors, 32]" lost its second bracket."""
    config = write(tmp_path, SMALL.replace("[a red mug, freedom]", "'prompts [n_vectors, 32].csv'"))
    before = snapshot(tmp_path)
    code, _, err = cli("capture", "-c", config, "-o", tmp_path / "s.h5", "-q")
    assert_refused(code, err, "prompts [n_vectors, 32].csv")
    assert snapshot(tmp_path) == before


def test_the_error_printer_prints_markup_literally(capsys):
    from cemaps.cli.app import print_error

    print_error("expected [32] or [n_vectors, 32] for this text encoder; see [link=x]here[/link]")
    err = capsys.readouterr().err
    assert err == "error: expected [32] or [n_vectors, 32] for this text encoder; see [link=x]here[/link]\n"


def test_status_lines_print_paths_literally(cli, tmp_path):
    config = write(tmp_path, SMALL)
    store = tmp_path / "run [v2]" / "s.h5"
    store.parent.mkdir()
    code, _, err = cli("capture", "-c", config, "-o", store, "-q")
    assert code == 0, err
    assert f"store {store}:" in err
    code, out, err = cli("inspect", store, "--no-provenance")
    assert code == 0, err
    assert str(store) in out.replace("\n", "")
