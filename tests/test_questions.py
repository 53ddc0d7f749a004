"""The arithmetic questions for instruct models: held-out splits, the prompt, the verdict."""

import pytest

from cepo.tasks import ArithmeticQuestions


def test_splits_are_disjoint_and_cover_every_question():
    task = ArithmeticQuestions()
    splits = {name: [e.prompt for e in task.split(name)] for name in ("train", "val", "test")}
    assert {k: len(v) for k, v in splits.items()} == {"train": 610, "val": 200, "test": 200}
    every = [q for part in splits.values() for q in part]
    assert len(set(every)) == len(every) == 400 + 400 + 210  # a + b, a * b, a - b with a >= b
    assert splits["val"][0] == "What is 9 + 20?\nPut your final answer within \\boxed{}."
    assert ArithmeticQuestions().split("val")[0].answer == "29"
    assert [e.prompt for e in ArithmeticQuestions(seed=8).split("val")] != splits["val"]


def test_answers_are_the_values():
    for e in ArithmeticQuestions(max_operand=5, val_size=3, test_size=3).split("train"):
        a, op, b = e.prompt.split("?")[0].removeprefix("What is ").split()
        assert int(e.answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert op != "-" or int(e.answer) >= 0


@pytest.mark.parametrize(
    "response, correct",
    [
        ("\\boxed{29}", True),
        ("9 + 20 = 29", True),
        ("9 + 20 =", False),  # the question restated
        ("\\boxed{9 + 20}", False),
        ("\\boxed{29} and then 30", True),  # the box is what it commits to
        ("\\boxed{}", False),
        ("no idea", False),
    ],
)
def test_the_committed_value_decides(response, correct):
    assert ArithmeticQuestions().is_correct(response, "29") is correct


def test_bad_settings_name_the_setting():
    with pytest.raises(ValueError, match="task.max_operand"):
        ArithmeticQuestions(max_operand=1)
    with pytest.raises(ValueError, match="task.val_size"):
        ArithmeticQuestions(max_operand=3, val_size=20, test_size=10).split("val")
    with pytest.raises(ValueError, match="task.prompt_template"):
        ArithmeticQuestions(prompt_template="no placeholder")
