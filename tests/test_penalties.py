"""Presence and repetition penalties: vLLM's meaning in every rollout engine.

vLLM (``vllm/model_executor/layers/utils.py``, ``apply_penalties``) penalizes the raw logits
before temperature: repetition first (tokens of the prompt or the output so far: a positive
logit is divided by the penalty, a negative one multiplied), then presence (subtracted once
from every token of the output so far; the prompt does not count).
"""

import math

import pytest

from cepo.rollout.engine import SamplingConfig


# -- (4) bad values are refused, naming the setting -----------------------------------------
@pytest.mark.parametrize(
    "kwargs,name",
    [
        ({"presence_penalty": 2.5}, "sampling.presence_penalty"),
        ({"presence_penalty": -2.01}, "sampling.presence_penalty"),
        ({"presence_penalty": math.nan}, "sampling.presence_penalty"),
        ({"repetition_penalty": 0.0}, "sampling.repetition_penalty"),
        ({"repetition_penalty": -1.2}, "sampling.repetition_penalty"),
        ({"repetition_penalty": math.inf}, "sampling.repetition_penalty"),
        ({"repetition_penalty": math.nan}, "sampling.repetition_penalty"),
    ],
)
def test_bad_penalties_are_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SamplingConfig(**kwargs)


def test_edge_values_are_accepted():
    for kwargs in ({"presence_penalty": 2.0}, {"presence_penalty": -2.0}, {"repetition_penalty": 0.01}):
        SamplingConfig(**kwargs)
    assert not SamplingConfig().penalized and SamplingConfig(repetition_penalty=1.1).penalized
