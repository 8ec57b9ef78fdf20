"""Studies: the config and its checks, prompt sets, the runner, the planner and distribution.

The runner (:mod:`cemaps.study.runner`) is the one place where ``models/``, ``probes/`` and
``store/`` meet; :mod:`cemaps.study.plan` estimates a study's records, disk and time before
it runs; :mod:`cemaps.study.distributed` shares the work among capture processes.

Names are imported on first use, so ``import cemaps.study`` does not import torch.
"""

from importlib import import_module
from typing import TYPE_CHECKING

_LAZY = {
    "StudyConfig": "config",
    "GenerationSettings": "config",
    "PersonalizedEntry": "config",
    "load_config": "config",
    "config_from_dict": "config",
    "StudyResult": "runner",
    "run_study": "runner",
    "run_prompt_set": "runner",
    "prompt_table": "sets",
    "StudyPlan": "plan",
    "plan_study": "plan",
}
__all__ = [
    "GenerationSettings",
    "PersonalizedEntry",
    "StudyConfig",
    "StudyPlan",
    "StudyResult",
    "config_from_dict",
    "load_config",
    "plan_study",
    "prompt_table",
    "run_prompt_set",
    "run_study",
]

if TYPE_CHECKING:
    from cemaps.study.config import GenerationSettings, PersonalizedEntry, StudyConfig, config_from_dict, load_config
    from cemaps.study.plan import StudyPlan, plan_study
    from cemaps.study.runner import StudyResult, run_prompt_set, run_study
    from cemaps.study.sets import prompt_table


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'cemaps.study' has no attribute {name!r}")
    value = getattr(import_module(f"cemaps.study.{_LAZY[name]}"), name)
    globals()[name] = value
    return value
