"""Answers compared as what they mean: one table of reference/response pairs with the verdict of
each verifier (``JsonlTask(verifier="exact")`` and ``JsonlTask()``, math-verify), checked against
math-verify itself wherever math-verify decides the pair.

Commas: a number written with thousands separators (``1,000``, ``12,345,678``) is that number;
every other comma separates items, so ``(1,5)`` is not ``(15)``, ``2, 3`` is not ``23`` and
``[1,2]`` is not ``[12]`` (``cepo.tasks.jsonl`` removed every comma before these rows were
added, and all three counted as correct with either verifier).

Several solutions (``2, 3``): the exact verifier compares them as written, so ``3, 2`` is
wrong; math-verify reads a bare list as a set, so ``3, 2`` is right. A bracketed list is a
tuple or an interval for both: order and brackets count.

Empty boxes: a response whose last ``\\boxed{}`` is empty is wrong with either verifier. That is
cepo's rule, stricter than math-verify, which then falls back to an earlier number (it accepts
``It is 5, so \\boxed{}`` for 5); those rows are marked ``CEPO`` and not compared with it.
"""

import json
import logging

import pytest

from cepo.tasks import JsonlTask
from cepo.tasks import jsonl as jsonl_module
from cepo.tasks.jsonl import last_boxed, math_verify_equal, normalise, read_jsonl

MV = "math-verify"  # math-verify on the raw strings gives the math_verify column's verdict
EXACT = "exact"  # the exact match accepts first; math-verify finds no answer in the response
CEPO = "cepo"  # an empty last box: cepo refuses before math-verify is asked (math-verify accepts)

# (id, reference, response, exact verdict, math_verify verdict, who decides the latter)
TABLE = [
    # integers
    ("int", "3", "The answer is \\boxed{3}", True, True, MV),
    ("int-wrong", "3", "\\boxed{4}", False, False, MV),
    ("int-gsm8k-tail", "18", "so #### 18 eggs", True, True, MV),
    ("int-gsm8k-tail-comma", "18", "so #### 18, because", True, True, MV),
    ("int-last-number-comma", "5", "It is 4 + 1 = 5, I think", True, True, MV),
    ("int-last-number", "18", "She sells 16 - 3 - 4 = 9 eggs, so 9 * 2 = 18 dollars.", True, True, MV),
    ("int-trailing-zero", "18", "\\boxed{18.0}", True, True, MV),
    ("int-sign", "10", "\\boxed{-10}", False, False, MV),
    # thousands separators
    ("thousands-in-response", "1000", "\\boxed{1,000}", True, True, MV),
    ("thousands-in-reference", "1,000", "\\boxed{1000}", True, True, MV),
    ("thousands-both", "1,000", "\\boxed{1,000}", True, True, MV),
    ("thousands-millions", "12345678", "\\boxed{12,345,678}", True, True, MV),
    ("thousands-decimal", "1,000.5", "\\boxed{1000.5}", True, True, MV),
    ("thousands-negative", "-1,000", "\\boxed{-1000}", True, True, MV),
    ("thousands-latex", "1000", "\\boxed{1{,}000}", True, True, MV),
    ("thousands-gsm8k-tail", "1000", "#### 1,000", True, True, MV),
    ("thousands-in-text", "18000", "He makes 18,000.", True, True, MV),
    ("thousands-last-number", "18000", "He makes \\$18,000.", True, True, EXACT),
    ("thousands-dollar-box", "18", "\\boxed{\\$18}", True, True, MV),
    ("not-thousands-two-digits", "100", "\\boxed{1,00}", False, False, MV),
    ("not-thousands-four-digits", "10000", "\\boxed{1,0000}", False, False, MV),
    ("not-thousands-spaced", "1000", "\\boxed{1, 000}", False, False, MV),
    ("not-thousands-in-tuple", "(1000, 2)", "\\boxed{(1,000, 2)}", False, False, MV),
    # the false positives of whole-answer comma removal
    ("tuple-not-a-number", "(1,5)", "\\boxed{(15)}", False, False, MV),
    ("solutions-not-a-number", "2, 3", "\\boxed{23}", False, False, MV),
    ("list-not-a-number", "[1,2]", "\\boxed{[12]}", False, False, MV),
    ("pair-not-a-number", "1,5", "\\boxed{15}", False, False, MV),
    ("triple-not-a-number", "1,2,3", "\\boxed{123}", False, False, MV),
    # negatives
    ("negative", "-3", "\\boxed{-3}", True, True, MV),
    ("negative-sign-lost", "-3", "\\boxed{3}", False, False, MV),
    ("negative-fraction", "-\\frac{1}{2}", "\\boxed{-0.5}", False, True, MV),
    # fractions and decimals
    ("frac", "\\frac{1}{2}", "\\boxed{\\frac{1}{2}}", True, True, MV),
    ("frac-decimal", "\\frac{1}{2}", "\\boxed{0.5}", False, True, MV),
    ("frac-dfrac", "\\frac{1}{2}", "\\boxed{\\dfrac{1}{2}}", False, True, MV),
    ("frac-slash", "\\frac{1}{2}", "\\boxed{1/2}", False, True, MV),
    ("frac-short", "0.5", "\\boxed{\\frac12}", False, True, MV),
    ("frac-wrong", "\\frac{1}{3}", "\\boxed{0.5}", False, False, MV),
    ("decimal-trailing-zero", "3.14", "\\boxed{3.140}", False, True, MV),
    ("decimal-wrong", "3.14", "\\boxed{3.15}", False, False, MV),
    # LaTeX text and units
    ("unit-in-response", "5", "\\boxed{5\\text{ cm}}", False, True, MV),
    ("unit-in-reference", "5\\text{ cm}", "\\boxed{5}", False, True, MV),
    ("text-number", "5", "\\boxed{\\text{5}}", False, True, MV),
    # tuples
    ("tuple", "(1,5)", "\\boxed{(1, 5)}", True, True, MV),
    ("tuple-order", "(1,5)", "\\boxed{(5,1)}", False, False, MV),
    ("tuple-latex", "\\left( 3, \\frac{\\pi}{2} \\right)", "\\boxed{(3, \\pi/2)}", False, True, MV),
    # intervals
    ("interval", "[1,2)", "\\boxed{[1, 2)}", True, True, MV),
    ("interval-brackets", "[1,2]", "\\boxed{(1,2)}", False, False, MV),
    ("interval-infinite", "(-\\infty, 3]", "\\boxed{(-\\infty,3]}", True, True, MV),
    ("interval-open-end", "(-\\infty, 3]", "\\boxed{(-\\infty,3)}", False, False, MV),
    # several solutions
    ("solutions", "2, 3", "\\boxed{2,3}", True, True, MV),
    ("solutions-order", "2, 3", "\\boxed{3, 2}", False, True, MV),
    ("solutions-unboxed", "2, 3", "The answer is 2, 3", False, False, MV),
    ("solutions-one-missing", "2, 3", "\\boxed{2}", False, False, MV),
    ("solutions-one-extra", "2", "\\boxed{2, 3}", False, False, MV),
    ("solutions-set", "\\{1,2\\}", "\\boxed{\\{2,1\\}}", False, True, MV),
    # empty boxes
    ("empty-box", "0", "\\boxed{}", False, False, MV),
    ("empty-box-spaces", "5", "\\boxed{ }", False, False, MV),
    ("empty-box-after-answer", "5", "\\boxed{5} wait, \\boxed{}", False, False, MV),
    ("empty-box-after-number", "5", "It is 5, so \\boxed{}", False, False, CEPO),
    ("empty-box-after-math", "5", "$5$ \\boxed{}", False, False, CEPO),
]
IDS = [row[0] for row in TABLE]


@pytest.mark.parametrize("reference, response, exact, mv", [row[1:5] for row in TABLE], ids=IDS)
def test_exact_verifier(reference, response, exact, mv):
    assert JsonlTask(verifier="exact").is_correct(response, reference) is exact


@pytest.mark.parametrize("reference, response, exact, mv", [row[1:5] for row in TABLE], ids=IDS)
def test_math_verify_verifier(reference, response, exact, mv):
    assert JsonlTask(verify_timeout=30).is_correct(response, reference) is mv


@pytest.mark.parametrize("reference, response, exact, mv, decides", [row[1:] for row in TABLE], ids=IDS)
def test_table_agrees_with_math_verify(reference, response, exact, mv, decides):
    """math-verify on the raw strings (as cepo hands them to it) gives the table's verdict
    wherever it decides; the rows where it does not are checked to be what they say."""
    pytest.importorskip("math_verify")
    from math_verify import parse

    if decides == MV:
        assert math_verify_equal(response, reference) is mv
    elif decides == EXACT:
        assert exact and mv and parse(response, parsing_timeout=None) == []
    else:
        assert decides == CEPO and not mv and last_boxed(response) == ""
        assert math_verify_equal(response, reference) is True  # an earlier number, which cepo ignores


def test_math_verify_gets_the_committed_answer_as_written(monkeypatch):
    """No comma is stripped on the way to math-verify, and it is asked whenever the exact match
    refuses (the old whole-answer comma removal accepted this pair before asking it). It sees the
    last box alone when there is one, else the text."""
    seen = []
    monkeypatch.setattr(
        jsonl_module, "math_verify_equal", lambda response, answer: seen.append((response, answer)) or False
    )
    assert JsonlTask().is_correct("so \\boxed{(15)}", "(1,5)") is False
    assert JsonlTask().is_correct("Half of it: 0.50 of the cake", "\\frac{1}{2}") is False
    assert seen == [("\\boxed{(15)}", "(1,5)"), ("Half of it: 0.50 of the cake", "\\frac{1}{2}")]


@pytest.mark.parametrize(
    "response, reference, correct",
    [
        ("9 + 20 =", "29", False),  # the question restated: math-verify alone evaluates it to 29
        ("\\boxed{9+20}", "29", False),
        ("\\boxed{17 \\times 17}", "289", False),
        ("The sum is 9 + 20 = 29.", "29", True),  # working before the value is fine
        ("so the answer is 9 + 20", "29", False),  # math-verify's pick from the text, unevaluated
        ("so the answer is $\\frac{1}{2}$", "0.5", True),  # a value in the text, no box
        ("\\boxed{29}", "29", True),
        ("\\boxed{1/2}", "0.5", True),  # a fraction is a value
        ("\\boxed{0.5}", "\\frac{1}{2}", True),
        ("\\boxed{-5}", "-5", True),
        ("\\boxed{3 + 2\\sqrt{2}}", "3+2\\sqrt{2}", True),  # the reference is an expression itself
    ],
)
def test_an_unevaluated_expression_does_not_answer_a_number(response, reference, correct):
    """RL on SmolLM2 with ``What is 9 + 20?`` found, within ten steps, that restating the question
    (``9 + 20 =``) scored as correct: math-verify read the text's expression and evaluated it. Only
    the committed answer is verified, and arithmetic left undone does not answer a plain number."""
    pytest.importorskip("math_verify")
    assert JsonlTask().is_correct(response, reference) is correct


def test_math_verify_does_not_warn_that_its_timeout_is_off(monkeypatch, caplog):
    """cepo turns math-verify's own timeouts off and bounds it with its own (verify_timeout), so
    math-verify's "Timeout is disabled ..." warning would only mislead: it is silenced."""
    import math_verify.grader
    import math_verify.parser

    monkeypatch.setattr(math_verify.parser, "TIMEOUT_WARNING_SHOWN", False)  # warned once per process
    monkeypatch.setattr(math_verify.grader, "TIMEOUT_WARNING_SHOWN", False)
    jsonl_module._parse_gold.cache_clear()
    with caplog.at_level(logging.WARNING):
        assert math_verify_equal("\\boxed{0.5}", "\\frac{1}{2}") is True
    assert math_verify.parser.TIMEOUT_WARNING_SHOWN and math_verify.grader.TIMEOUT_WARNING_SHOWN  # both asked
    assert not [r for r in caplog.records if "Timeout is disabled" in r.getMessage()], caplog.text


def test_the_table_covers_both_verdicts_and_both_verifiers_disagreeing():
    exact = [row[3] for row in TABLE]
    mv = [row[4] for row in TABLE]
    assert any(exact) and not all(exact) and any(mv) and not all(mv)
    assert any(m and not e for e, m in zip(exact, mv))  # math-verify accepts more
    assert not any(e and not m for e, m in zip(exact, mv))  # and never less than the exact match


@pytest.mark.parametrize(
    "answer, canonical",
    [
        ("1,000", "1000"),
        ("12,345,678", "12345678"),
        ("-1,000.0", "-1000"),
        ("1{,}000", "1000"),
        (" $1,000$. ", "1000"),
        ("\\$18", "18"),
        ("1, 000", "1,000"),
        ("1,0000", "1,0000"),
        ("12,34", "12,34"),
        ("(1,5)", "(1,5)"),
        ("(1,000, 2)", "(1,000,2)"),
        ("2, 3", "2,3"),
        ("[1, 2]", "[1,2]"),
        ("\\frac{1}{2}", "\\frac{1}{2}"),
        ("", ""),
    ],
)
def test_normalise_drops_only_thousands_separators(answer, canonical):
    assert normalise(answer) == canonical


@pytest.mark.parametrize("verifier", ["exact", "math_verify"])
@pytest.mark.parametrize("answer", ["", "  ", "$", "0"])
def test_an_empty_box_never_scores(verifier, answer):
    task = JsonlTask(verifier=verifier, verify_timeout=30)
    for response in ("\\boxed{}", "\\boxed{ }", "\\boxed{$$}", "0 then \\boxed{}"):
        assert task.is_correct(response, answer) is False, (response, answer)
        assert task.reward(response, answer) == 0.0


@pytest.mark.parametrize(
    "row, expected",
    [
        ({"question": "q", "answer": "Six.\n#### "}, "f.jsonl:2: row has an empty answer (nothing after the '####"),
        ({"problem": "q", "solution": "So $x = \\boxed{}$."}, "f.jsonl:2: row has an empty answer (the last \\boxed{}"),
        ({"problem": "q", "solution": "\\boxed{1} then \\boxed{ }"}, "f.jsonl:2: row has an empty answer (the last"),
        ({"question": "q", "answer": "$ $"}, "f.jsonl:2: row has an empty answer ('answer' '$ $' without"),
    ],
    ids=["gsm8k-hashes", "math-boxed", "math-last-boxed", "dollars"],
)
def test_an_empty_reference_is_refused_at_load(tmp_path, row, expected):
    f = tmp_path / "f.jsonl"
    f.write_text(json.dumps({"question": "q", "answer": "1"}) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError) as err:
        read_jsonl(f, "{question}")
    assert str(err.value).startswith(str(tmp_path)) and expected in str(err.value)
    assert "\n" not in str(err.value)


def test_references_that_mean_something_load_unchanged(tmp_path):
    rows = [
        {"question": "q", "answer": "#### 1,000"},
        {"problem": "q", "solution": "so $\\boxed{(1,5)}$"},
        {"question": "q", "answer": 0},
        {"question": "q", "answer": "2, 3"},
    ]
    f = tmp_path / "f.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [e.answer for e in read_jsonl(f, "{question}")] == ["1,000", "(1,5)", "0", "2, 3"]
