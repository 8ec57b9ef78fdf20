"""`cemaps capture` and `cemaps inspect`, including every bad input a user can give."""

from __future__ import annotations

import textwrap

import pytest

from cemaps.store import open_store

SMALL = """
base: cemaps/tiny-sd
prompts: [a red mug, freedom]
seeds: [0]
generation: {steps: 2, batch_size: 2}
capture: {timesteps: 2}
"""


def _write(tmp_path, text, name="study.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _one_line_error(code, err, *fragments):
    """Exit code 2, one `error:` line naming the input, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert err.rstrip().endswith(errors[0].rstrip()), err  # nothing after the message
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def test_capture_then_inspect(tmp_path, run_cli):
    config = _write(tmp_path, SMALL)
    code, out, err = run_cli("capture", "--config", config, "--store", tmp_path / "s.h5", "--no-progress")
    assert code == 0, err
    with open_store(tmp_path / "s.h5") as store:
        assert len(store.records) == 2
        assert store.settings["capture"]["timesteps"] == 2
    code, out, err = run_cli("inspect", tmp_path / "s.h5")
    assert code == 0, err
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2" in out
    assert "token, step, half, head, y, x" in out
    assert "kB/record" in out and "diffusers" in out


def test_overrides_from_flags(tmp_path, run_cli):
    config = _write(tmp_path, SMALL)
    code, _, err = run_cli(
        "capture", "-c", config, "-o", tmp_path / "s.h5", "--seeds", "3,4", "--steps", "1", "--no-progress"
    )
    assert code == 0, err
    with open_store(tmp_path / "s.h5") as store:
        assert sorted(set(store.records["seed"])) == [3, 4]
        assert store.settings["generation"]["steps"] == 1


def test_missing_model_path(tmp_path, run_cli):
    config = _write(tmp_path, SMALL.replace("cemaps/tiny-sd", str(tmp_path / "no-such-model")))
    code, _, err = run_cli("capture", "-c", config, "-o", tmp_path / "s.h5", "--no-progress")
    _one_line_error(code, err, "no-such-model")
    assert not (tmp_path / "s.h5").exists()


def test_layer_glob_matching_nothing(tmp_path, run_cli):
    config = _write(tmp_path, SMALL.replace("timesteps: 2", 'timesteps: 2, layers: "*attn9"'))
    code, _, err = run_cli("capture", "-c", config, "-o", tmp_path / "s.h5", "--no-progress")
    _one_line_error(code, err, "*attn9", "matches no cross-attention layer")
    assert not (tmp_path / "s.h5").exists()


def test_malformed_yaml_names_the_line(tmp_path, run_cli):
    config = _write(tmp_path, "base: cemaps/tiny-sd\nseeds: [0, 1\nprompts: demo24\n")
    code, _, err = run_cli("capture", "-c", config, "-o", tmp_path / "s.h5")
    _one_line_error(code, err, "study.yaml", "line 3", "malformed YAML")


def test_unknown_config_key_is_named(tmp_path, run_cli):
    config = _write(tmp_path, SMALL.replace("capture: {timesteps: 2}", "capture: {timesteps: 2, pool: 4}"))
    code, _, err = run_cli("capture", "-c", config, "-o", tmp_path / "s.h5")
    _one_line_error(code, err, "unknown key 'capture.pool'")


def test_unknown_top_level_key_is_named(tmp_path, run_cli):
    config = _write(tmp_path, SMALL + "sedes: [1]\n")
    code, _, err = run_cli("capture", "-c", config, "-o", tmp_path / "s.h5")
    _one_line_error(code, err, "unknown key 'sedes'")


@pytest.mark.parametrize("seeds", ["[0, one]", "[1.5]", "[-1]", "seven"])
def test_non_integer_seeds(tmp_path, run_cli, seeds):
    config = _write(tmp_path, SMALL.replace("seeds: [0]", f"seeds: {seeds}"))
    code, _, err = run_cli("capture", "-c", config, "-o", tmp_path / "s.h5")
    _one_line_error(code, err, "seeds")


def test_non_integer_seed_flag(tmp_path, run_cli):
    config = _write(tmp_path, SMALL)
    code, _, err = run_cli("capture", "-c", config, "-o", tmp_path / "s.h5", "--seeds", "0,x")
    _one_line_error(code, err, "--seeds '0,x'")


def test_empty_prompt_list(tmp_path, run_cli):
    config = _write(tmp_path, SMALL.replace("prompts: [a red mug, freedom]", "prompts: []"))
    code, _, err = run_cli("capture", "-c", config, "-o", tmp_path / "s.h5")
    _one_line_error(code, err, "prompts is an empty list")
    assert not (tmp_path / "s.h5").exists()


def test_missing_config_file(tmp_path, run_cli):
    code, _, err = run_cli("capture", "-c", tmp_path / "nope.yaml")
    _one_line_error(code, err, "nope.yaml", "not found")


def test_long_prompt_warns_and_records_truncation(tmp_path, run_cli):
    long_prompt = " ".join(["a very long and winding description of a lighthouse"] * 12)
    config = _write(tmp_path, SMALL.replace("[a red mug, freedom]", f"[a red mug, '{long_prompt}']"))
    with pytest.warns(UserWarning, match="tokens; the text encoder sees only the first 77"):
        code, _, err = run_cli("capture", "-c", config, "-o", tmp_path / "s.h5", "--no-progress")
    assert code == 0, err
    with open_store(tmp_path / "s.h5") as store:
        prompts = store.prompts
        assert list(prompts["truncated"]) == [False, True]
        assert prompts["n_tokens_untruncated"].iloc[1] > 77 and len(prompts["tokens"].iloc[1]) == 77


def test_foreign_h5_is_refused(tmp_path, run_cli):
    import h5py

    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = [1, 2, 3]
    config = _write(tmp_path, SMALL)
    code, _, err = run_cli("capture", "-c", config, "-o", tmp_path / "foreign.h5", "--no-progress")
    _one_line_error(code, err, "foreign.h5", "not a cemaps store")
    code, _, err = run_cli("inspect", tmp_path / "foreign.h5")
    _one_line_error(code, err, "foreign.h5", "not a cemaps store")
    with h5py.File(tmp_path / "foreign.h5", "r") as f:
        assert list(f) == ["x"]


def test_unreadable_h5_is_refused(tmp_path, run_cli):
    (tmp_path / "garbage.h5").write_bytes(b"this is not hdf5" * 100)
    code, _, err = run_cli("inspect", tmp_path / "garbage.h5")
    _one_line_error(code, err, "garbage.h5")


def test_appending_with_other_capture_settings_is_refused(tmp_path, run_cli):
    config = _write(tmp_path, SMALL)
    assert run_cli("capture", "-c", config, "-o", tmp_path / "s.h5", "--no-progress")[0] == 0
    other = _write(tmp_path, SMALL.replace("timesteps: 2", "timesteps: 2, spatial: 4"), "other.yaml")
    code, _, err = run_cli("capture", "-c", other, "-o", tmp_path / "s.h5", "--no-progress")
    _one_line_error(code, err, "s.h5", "spatial")
    with open_store(tmp_path / "s.h5") as store:
        assert len(store.records) == 2


def test_appending_with_another_base_is_refused(tmp_path, run_cli, tiny_pipe):
    config = _write(tmp_path, SMALL)
    assert run_cli("capture", "-c", config, "-o", tmp_path / "s.h5", "--no-progress")[0] == 0
    from cemaps.models import tiny_pipeline

    tiny_pipeline(seed=1).save_pretrained(tmp_path / "other-base")
    code, _, err = run_cli(
        "capture", "-c", config, "-o", tmp_path / "s.h5", "--base", tmp_path / "other-base", "--no-progress"
    )
    _one_line_error(code, err, "s.h5", "base")
