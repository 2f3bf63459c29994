"""--method auto: the choice rule and the re-indexing of the artifact into the fit part."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch.utils.data import TensorDataset

from spray.clarc.auto import MAX_CLEAN_LOSS, choose, counterfactual_transforms, within
from spray.clarc.transform import Paste, Shift


def test_auto_chooses_the_best_worst_group_among_those_that_keep_clean_accuracy():
    figures = {"pclarc": {"worst_group": 0.6, "clean_loss": 0.0},
               "aclarc": {"worst_group": 0.9, "clean_loss": 0.01},
               "rrclarc": {"worst_group": 0.95, "clean_loss": MAX_CLEAN_LOSS + 0.01}}
    assert choose(figures) == "aclarc"


def test_auto_breaks_ties_for_the_candidate_listed_first():
    figures = {"pclarc": {"worst_group": 0.9, "clean_loss": 0.0}, "aclarc": {"worst_group": 0.9, "clean_loss": 0.0}}
    assert choose(figures) == "pclarc"


def test_auto_takes_the_smallest_clean_loss_when_every_candidate_loses_too_much():
    figures = {"pclarc": {"worst_group": 0.9, "clean_loss": 0.10}, "aclarc": {"worst_group": 0.5, "clean_loss": 0.05}}
    assert choose(figures) == "aclarc"


@dataclasses.dataclass(frozen=True)
class Indexed:
    artifact_index: np.ndarray
    rest_index: np.ndarray


def test_within_reindexes_the_cluster_and_rest_into_the_fit_part():
    fit = np.array([0, 2, 3, 5, 8, 9])
    reduced = within(Indexed(np.array([2, 4, 8]), np.array([3, 7, 9])), fit)
    assert reduced.artifact_index.tolist() == [1, 4]  # 2 and 8 are fit[1] and fit[4]; 4 is held out
    assert reduced.rest_index.tolist() == [2, 5]


@dataclasses.dataclass(frozen=True)
class Isolated:
    mask: torch.Tensor
    patch: torch.Tensor
    artifact_index: np.ndarray
    rest_index: np.ndarray


def test_a_global_artifact_is_scored_with_the_shift_alone_a_local_one_with_the_patch_and_the_shift():
    data = TensorDataset(torch.arange(4.0).reshape(4, 1, 1, 1), torch.zeros(4, dtype=torch.long))
    artifact = Isolated(torch.ones(1, 1), torch.full((1, 1, 1), 7.0), np.array([2, 3]), np.array([0, 1]))
    (shift,) = counterfactual_transforms(artifact, data, "global")
    assert isinstance(shift, Shift) and shift.delta.item() == 2.0  # mean(2, 3) - mean(0, 1)
    paste, shift = counterfactual_transforms(artifact, data, "local")
    assert isinstance(paste, Paste) and isinstance(shift, Shift)
    assert paste(torch.zeros(1, 1, 1, 1)).item() == 7.0
