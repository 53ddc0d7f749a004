"""The token-weight page of a vision-language run shows each rollout's prompt images as small
embedded thumbnails next to its tokens; a text run's page has none."""

import base64
import dataclasses
import io
import re
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from cepo.bases.tiny import char_tokenizer
from cepo.callbacks import TokenWeightLogger
from cepo.callbacks.token_weights import thumbnail
from cepo.rollout.batch import Provenance

IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="image (\d) of the prompt">')


def record(images):
    """A step of 2 prompts x 2 rollouts (rows 0, 2 correct), ``images`` one entry per prompt."""
    tok = char_tokenizer()
    ids = [tok("12").input_ids, tok("7").input_ids, tok("3").input_ids, tok("45").input_ids]
    batch = SimpleNamespace(
        num_rollouts=4,
        group_size=2,
        correct=torch.tensor([True, False, True, False]),
        rewards=torch.tensor([1.0, 0.0, 1.0, 0.0]),
        provenance=Provenance(
            prompts=["<image>a", "<image>b"],
            answers=["12", "3"],
            solutions=["", ""],
            responses=["12", "7", "3", "45"],
            extracted=["12", "7", "3", "45"],
            prompt_ids=[tok("<image>a").input_ids, tok("<image>b").input_ids],
            response_ids=ids,
            weight_version=0,
            images=images,
        ),
    )
    weight = torch.ones(4, 2)
    output = SimpleNamespace(
        weight=weight, token_advantages=weight, delta=None, weight_range=(0.5, 2.0), legend="w", clipped=None
    )
    inputs = SimpleNamespace(contexts=None, advantages=torch.ones(4), has_negative=None)
    return SimpleNamespace(batch=batch, output=output, credit="Contrastive()", inputs=inputs), tok


def render(tmp_path, images, **kwargs):
    rec, tok = record(images)
    return TokenWeightLogger(**kwargs).render(rec, 1, tok, tmp_path).read_text()


def test_each_rollout_shows_its_prompts_image_as_a_bounded_thumbnail(tmp_path):
    red, blue = Image.new("RGB", (400, 100), (250, 0, 0)), Image.new("RGB", (30, 60), (0, 0, 250))
    page = render(tmp_path, [SimpleNamespace(raw=[red]), SimpleNamespace(raw=[blue])], thumbnail_px=64)
    shown = [(Image.open(io.BytesIO(base64.b64decode(data))), k) for data, k in IMG.findall(page)]
    assert len(shown) == 4 and all(k == "0" for _, k in shown)  # one image per rollout shown (4 rows)
    # row order on the page: correct rows 0, 2, then wrong rows 1, 3; rows 0, 1 show prompt 0 (red)
    colours = [im.convert("RGB").getpixel((0, 0)) for im, _ in shown]
    assert colours == [(250, 0, 0), (0, 0, 250), (250, 0, 0), (0, 0, 250)]
    assert [im.size for im, _ in shown] == [(64, 16), (30, 60), (64, 16), (30, 60)]  # shrunk, never enlarged
    # each thumbnail sits in its rollout's box, before that rollout's tokens
    boxes = page.split('<div class="r">')[1:]
    assert all(box.index("<img") < box.index('<div class="t">') for box in boxes)


def test_a_text_run_page_has_no_images(tmp_path):
    page = render(tmp_path, None)
    assert "<img" not in page and page.count('<div class="r">') == 4


def test_a_thumbnail_is_small_whatever_the_image():
    noise = Image.effect_noise((2000, 1500), 100).convert("RGB")  # incompressible: the worst case
    url = thumbnail(noise, 128)
    image = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert image.size == (128, 96) and len(url) < 4 * 128 * 96 * 3 // 3 + 2000  # at most raw RGB, in base64
    with pytest.raises(ValueError, match="token_weights.thumbnail_px must be >= 8"):
        TokenWeightLogger(thumbnail_px=4)


def test_delta_per_token_role_comes_from_the_tasks_roles_over_credited_rows():
    """|Delta| per role: each token takes its characters' role from the task the rows came from
    (carried by the batch's provenance); rows with advantage 0 are left out."""
    tok = char_tokenizer()
    responses = ["a7", "bc8", "9d"]
    ids = [tok(r).input_ids for r in responses]
    mask = torch.tensor([[True, True, False], [True, True, True], [True, True, False]])
    batch = SimpleNamespace(
        correct=torch.tensor([True, False, False]),
        response_mask=mask,
        provenance=Provenance(
            prompts=["p"],
            answers=["7"],
            solutions=[""],
            responses=responses,
            extracted=["7", "8", "9"],
            prompt_ids=[tok("p").input_ids],
            response_ids=ids,
            weight_version=0,
            token_roles=lambda text: ["decisive" if ch.isdigit() else "filler" for ch in text],
        ),
    )
    delta = torch.tensor([[0.5, -2.0, 0.0], [1.0, -3.0, 4.0], [100.0, 100.0, 0.0]])
    output = SimpleNamespace(weight=torch.ones(3, 3), delta=delta, clipped=None)
    inputs = SimpleNamespace(advantages=torch.tensor([1.0, -0.5, 0.0]), has_negative=None)  # row 2: no credit
    logger = TokenWeightLogger()
    metrics = logger.step_metrics(SimpleNamespace(batch=batch, output=output, inputs=inputs), tok)
    assert metrics["credit/role/filler/abs_delta_mean"] == pytest.approx((0.5 + 1.0 + 3.0) / 3)
    assert metrics["credit/role/decisive/abs_delta_mean"] == pytest.approx((2.0 + 4.0) / 2)
    assert logger.role_summary() == pytest.approx({"filler": 1.5, "decisive": 3.0})
    without = dataclasses.replace(batch.provenance, token_roles=None)
    batch.provenance = without
    metrics = logger.step_metrics(SimpleNamespace(batch=batch, output=output, inputs=inputs), tok)
    assert not [k for k in metrics if k.startswith("credit/role/")]
