"""An example of a user-defined reward component (``cepo.rewards.Function``).

Named from YAML as ``experiments/rewards.py:brevity`` (``configs/rewards/custom.yaml``):

    def fn(prompts: list[str], responses: list[str], answers: list[str]) -> list[float]

gets one entry per rollout (prompts and answers repeated over each group) and returns one float
per response.
"""


def brevity(prompts: list[str], responses: list[str], answers: list[str]) -> list[float]:
    """1 for an empty response, falling linearly to 0 at 200 characters (a length preference)."""
    return [max(0.0, 1.0 - len(r) / 200.0) for r in responses]
