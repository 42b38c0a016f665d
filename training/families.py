"""The model families by preset (`TrainConfig.preset`): the one place a new family is listed.

Each value is a family's `builder` module (`training.family.Family`): the recipe asks it for a fit
and, for `--export_only`, for the network a checkpoint holds.
"""

from __future__ import annotations

from training.family import Family
from training.neural import builder as neural
from training.radio_map import builder as radio_map, learned_builder as learned_radio_map

FAMILIES: dict[str, Family] = {"radio-map": radio_map, "radio-map-learned": learned_radio_map,
                               "tiny": neural, "small": neural, "large": neural}
