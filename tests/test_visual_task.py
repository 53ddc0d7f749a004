"""The built-in visual task: the digits are in the picture (and only there), splits are fixed and
disjoint, and responses are verified and labelled like the text arithmetic task's."""

import itertools

import numpy as np
import pytest
from PIL import Image

from cepo.tasks import visual
from cepo.tasks.arithmetic import COPIED, DECISIVE, FILLER
from cepo.tasks.base import IMAGE_PLACEHOLDER
from cepo.tasks.visual import CENTRED, OPS, Look, RenderedSplit, VisualArithmetic, render, token_roles

SMALL = {"train_size": 600, "val_size": 60, "test_size": 60}


def pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def halves(img: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    p = pixels(img)
    return p[:, : p.shape[1] // 2], p[:, p.shape[1] // 2 :]


def test_splits_are_deterministic_and_seeded():
    one, two = VisualArithmetic(ops="+-*", **SMALL), VisualArithmetic(ops="+-*", **SMALL)
    for name in ("train", "val", "test"):
        assert one.problems(name) == two.problems(name)
        for x, y in zip(one.split(name)[:5], two.split(name)[:5]):
            assert (x.prompt, x.answer, x.solution) == (y.prompt, y.answer, y.solution)
            assert x.images[0].tobytes() == y.images[0].tobytes()
    assert VisualArithmetic(seed=7, **SMALL).problems("val") != one.problems("val")


def test_held_out_problems_never_appear_in_training():
    # jitter 1 leaves few enough (a, b, op, shifts) that training draws do hit held-out ones
    task = VisualArithmetic(ops="+-*", jitter=1, train_size=4000, val_size=300, test_size=300)
    keys = {name: [(a, b, op, *look[:4]) for a, b, op, look in task.problems(name)] for name in task.sizes}
    assert len(set(keys["val"])) == 300 and len(set(keys["test"])) == 300
    assert not set(keys["val"]) & set(keys["test"])
    assert not set(keys["train"]) & (set(keys["val"]) | set(keys["test"]))
    assert 3500 < len(keys["train"]) < 4000  # the colliding draws were removed, not redrawn
    assert {op for *_, op, _ in task.problems("train")} == set("+-*")


def test_an_example_is_the_operation_in_text_and_the_digits_in_the_image():
    task = VisualArithmetic(ops="+-*", **SMALL)
    for (a, b, op, look), ex in zip(task.problems("val"), task.split("val")):
        assert ex.prompt == f"{IMAGE_PLACEHOLDER}{op}=" and ex.prompt.count(IMAGE_PLACEHOLDER) == len(ex.images) == 1
        assert ex.solution == f" {a}{op}{b} = {OPS[op](a, b)}" and ex.answer == str(OPS[op](a, b))
        assert int(ex.answer) >= 0 and 0 <= a <= 9 and 0 <= b <= 9
        assert ex.images[0].mode == "RGB" and ex.images[0].size == (56, 56)
        assert max(abs(d) for d in look[:4]) <= 3


def test_each_half_shows_its_own_digit_and_only_it():
    look = Look(2, -1, -3, 3, noise_seed=5)
    left, right = halves(render(3, 8, look))
    for a2, b2 in ((3, 8), (5, 8), (3, 1)):
        l2, r2 = halves(render(a2, b2, look))
        assert (l2 == left).all() == (a2 == 3)  # identical for equal digit + shift + noise, else not
        assert (r2 == right).all() == (b2 == 8)
    # the same digits moved or with other noise are other pictures
    assert not (halves(render(3, 8, look._replace(dx_a=0)))[0] == left).all()
    assert not (pixels(render(3, 8, look._replace(noise_seed=6))) == pixels(render(3, 8, look))).all()


def test_the_digits_can_be_read_back_from_noisy_shifted_images():
    """Nearest noise-free template over every digit and shift reads both digits of every held-out
    image correctly: the picture really encodes a (left) and b (right)."""
    task = VisualArithmetic(ops="+-*", **SMALL)
    shifts = range(-task.jitter, task.jitter + 1)
    templates, labels = [], []
    for d, dx, dy in itertools.product(range(10), shifts, shifts):
        templates.append(halves(render(d, d, Look(dx, dy, dx, dy), noise=0))[0])
        labels.append(d)
    templates = np.stack(templates).astype(np.int32)  # [K, H, W, 3]

    def read(half: np.ndarray) -> int:
        return labels[int(np.abs(templates - half[None]).sum(axis=(1, 2, 3)).argmin())]

    for (a, b, _, _), ex in zip(task.problems("val"), task.split("val")):
        left, right = halves(ex.images[0])
        assert (read(left), read(right)) == (a, b)


def test_blank_images_keep_the_problems_but_show_nothing():
    task, control = VisualArithmetic(**SMALL), VisualArithmetic(blank_images=True, image_size=84, **SMALL)
    assert control.problems("val") == VisualArithmetic(image_size=84, **SMALL).problems("val")
    for ex, ex_blank in zip(task.split("val")[:20], control.split("val")[:20]):
        (img,) = ex_blank.images
        assert img.size == (84, 84) and img.mode == "RGB"
        assert img.getextrema() == ((255, 255),) * 3  # one colour: nothing to read
        assert (ex.prompt, ex.answer, ex.solution) == (ex_blank.prompt, ex_blank.answer, ex_blank.solution)


def test_image_size_is_configurable():
    (img,) = VisualArithmetic(image_size=112, **SMALL).split("test")[0].images
    assert img.size == (112, 112) and len(img.getcolors(1 << 16)) > 2


def test_extract_answer_and_is_correct():
    task = VisualArithmetic(ops="+-*", **SMALL)
    assert task.extract_answer(" 3+8 = 11") == "11"
    assert task.extract_answer(" 3+8 = 11 ") == "11"
    assert task.extract_answer(" 3+8 = ") is None and task.extract_answer("eleven") is None
    assert task.extract_answer(" 3-8 = -5") is None
    assert task.is_correct(" 3+8 = 11", "11") and not task.is_correct(" 3+8 = 12", "11")
    assert task.reward(" 4*2 = 8", "8") == 1.0
    assert all(task.is_correct(ex.solution, ex.answer) for ex in task.split("val"))


def test_token_roles_label_every_character():
    d, c, f = DECISIVE, COPIED, FILLER
    #                         " ", "3", "+", "8", " ", "=", " ", "1", "1"
    assert token_roles(" 3+8 = 11") == [f, d, c, d, f, f, f, d, d]
    assert token_roles(" 9*9 = 81 = 81") == [f, d, c, d, f, f, f, d, d, f, f, f, d, d]
    for text in ("", "=", "abc", " 3+8 = 1+1 = 2", " 7-2 = 5", "==9 9"):
        roles = VisualArithmetic(**SMALL).token_roles(text)
        assert len(roles) == len(text) and set(roles) <= {d, c, f}


def test_the_split_is_a_lazy_sequence_drawn_the_same_every_time():
    split = VisualArithmetic(**SMALL).split("train")
    assert isinstance(split, RenderedSplit) and len(split) == len(list(split)) and split
    head = split[:3]
    assert isinstance(head, RenderedSplit) and len(head) == 3
    assert head[1].solution == split[1].solution and split[-1].solution == split[len(split) - 1].solution
    assert split[2].images[0].tobytes() == split[2].images[0].tobytes()


def test_the_bitmap_font_fallback_draws_distinct_digits(monkeypatch):
    visual._glyph.cache_clear()
    monkeypatch.setattr(visual, "_font", lambda size: None)
    try:
        glyphs = [halves(render(d, d, CENTRED, noise=0))[0] for d in range(10)]
        assert all(g.min() == 0 for g in glyphs)  # ink in every half
        assert all(not (x == y).all() for x, y in itertools.combinations(glyphs, 2))
    finally:
        visual._glyph.cache_clear()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"ops": "/"}, "task.ops"),
        ({"ops": ""}, "task.ops"),
        ({"image_size": 55}, "task.image_size"),
        ({"image_size": 8}, "task.image_size"),
        ({"jitter": 8}, "task.jitter"),
        ({"noise": 1.5}, "task.noise"),
        ({"jitter": 0, "val_size": 80, "test_size": 30}, "exceed the 100 distinct problems"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisualArithmetic(**kwargs)


def test_unknown_split_is_an_error():
    with pytest.raises(ValueError, match="unknown split"):
        VisualArithmetic(**SMALL).split("dev")
