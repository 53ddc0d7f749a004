import math

import pytest
import torch

from cepo.advantages import group_advantages, zero_variance_groups


def test_group_advantages_hand_computed():
    # group 1: rewards 1,0,0,1 -> mean .5, unbiased std sqrt(1/3)
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    a = group_advantages(r, 4)
    s = math.sqrt(1 / 3)
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5]) / (s + 1e-6)
    assert torch.allclose(a[:4], expected, atol=1e-6)
    assert torch.equal(a[4:], torch.zeros(4))  # equal rewards -> exactly 0


def test_dr_grpo_scale_none():
    a = group_advantages(torch.tensor([3.0, 1.0]), 2, scale="none")
    assert torch.allclose(a, torch.tensor([1.0, -1.0]))


def test_bad_group_size_and_shape():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(torch.zeros(5), 2)


def test_zero_variance_groups():
    r = torch.tensor([1.0, 1.0, 0.0, 1.0])
    assert zero_variance_groups(r, 2).tolist() == [True, False]
