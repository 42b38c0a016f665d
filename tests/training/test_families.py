"""Every preset a job may name has a model family, and every family offers what the recipe asks of it."""

from __future__ import annotations

import inspect
from typing import get_args

import pytest

from foundation.train_config import TrainConfig
from training.families import FAMILIES
from training.family import Family, is_global_zero


def test_every_preset_of_the_configuration_has_a_family():
    assert set(FAMILIES) == set(get_args(TrainConfig.model_fields["preset"].annotation))


@pytest.mark.parametrize("family", sorted({f.__name__ for f in FAMILIES.values()}))
def test_a_family_offers_the_fit_and_load_the_recipe_calls(family):
    module = next(f for f in FAMILIES.values() if f.__name__ == family)
    for name in ("fit", "load"):
        expected = list(inspect.signature(getattr(Family, name)).parameters)[1:]  # without `self`
        assert list(inspect.signature(getattr(module, name)).parameters) == expected, (family, name)


@pytest.mark.parametrize(("variables", "zero"), [
    ({}, True),  # one process
    ({"RANK": "0", "LOCAL_RANK": "0"}, True),
    ({"RANK": "1"}, False),  # torchrun, a Kubeflow pod
    ({"LOCAL_RANK": "1"}, False),  # Lightning's own re-execution of the command
    ({"RANK": "0", "LOCAL_RANK": "1"}, True),  # the global rank wins over the rank on this node
    ({"SLURM_PROCID": "2"}, False),
])
def test_the_rank_is_read_from_what_launchers_set(monkeypatch, variables, zero):
    from lightning_fabric.utilities.rank_zero import _get_rank

    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    assert is_global_zero() is zero
    assert ((_get_rank() or 0) == 0) is zero  # Lightning's reading, which its Trainer starts from
