"""Issue 25: every config the project writes reads the same from any working directory.

The demo once wrote ``prompts: demo-out/toy_prompts_demo24.csv`` (relative to the current
directory) into ``demo-out/study.yaml``, which the loader resolves against the config's folder:
``demo-out/demo-out/...``. Here each written config is made from one directory with a relative
output folder and read from another, and every file it names must exist.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cemaps.demo import write_demo_config
from cemaps.study.config import StudyConfig, load_config
from cemaps.study.config_files import config_path_value, write_config
from cemaps.toyworld.demo_inputs import write_demo_inputs


def _named_files(study: StudyConfig) -> list[Path]:
    """Every file or folder a loaded config names that must exist before a capture."""
    files = [Path(entry.path) for entry in study.personalized]
    if isinstance(study.prompts, str) and study.prompts.endswith((".csv", ".yaml", ".yml")):
        files.append(Path(study.prompts))
    context = study.in_context
    files += [Path(v) for v in (context.prompts, context.subjects) if v.endswith((".csv", ".yaml", ".yml"))]
    files += [Path(folder) for folder in (context.subject_images or {}).values()]
    return files


def _demo_config(world: str) -> Path:
    """The demo's study.yaml written the way ``cemaps demo --out demo-out`` writes it: a relative folder."""
    out = Path("demo-out")
    out.mkdir()
    toy = write_demo_inputs(out, n_images=1) if world == "toy" else None
    subject_ids = list(toy.subject_images) if toy else ["face1", "object1"]
    personalized, subject_images = [], {}
    for subject_id in subject_ids:
        subject_images[subject_id] = out / "subjects" / subject_id
        subject_images[subject_id].mkdir(parents=True)
        model_dir = out / "models" / f"db-{subject_id}"
        model_dir.mkdir(parents=True)
        personalized.append(
            {"id": f"db-{subject_id}", "method": "dreambooth", "subject": subject_id, "path": model_dir}
        )
    return write_demo_config(out, toy, personalized, subject_images).resolve()


@pytest.mark.parametrize("world", ["toy", "tiny"])
def test_the_demo_config_written_with_a_relative_out_reads_the_same_from_elsewhere(world, tmp_path, monkeypatch):
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    config = _demo_config(world)
    text = config.read_text()
    assert "demo-out" not in text and str(tmp_path) not in text  # relative to its own folder, not to the cwd
    for where in (tmp_path / "here", tmp_path, config.parent / "models"):
        monkeypatch.chdir(where)
        study = load_config(config)
        assert Path(study.store) == config.parent / "study.h5"
        named = _named_files(study)
        assert named and all(path.exists() for path in named), [p for p in named if not p.exists()]
        assert all(path.is_relative_to(config.parent) for path in named)


def test_write_config_spells_paths_relative_to_the_configs_folder_or_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = Path("project")
    folder.mkdir()
    outside = tmp_path / "elsewhere" / "prompts.csv"
    written = write_config(
        folder / "study.yaml",
        {"base": "cemaps/tiny-sd", "store": folder / "out" / "study.h5", "prompts": outside, "seeds": (0, 1)},
    )
    assert written.read_text() == f"base: cemaps/tiny-sd\nstore: out/study.h5\nprompts: {outside}\nseeds:\n- 0\n- 1\n"
    assert config_path_value(folder, folder) == "."
    assert config_path_value(Path("project/../project/x.csv"), folder) == "x.csv"
