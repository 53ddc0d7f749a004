"""The rollout batch (``cepo/rollout/batch.py``): its tensors and their provenance, through the copies,
concatenations and gathers the objectives and dynamic sampling make. The re-packed rows themselves
are checked in test_objectives.py (``concat``) and test_dynamic_sampling.py (``gather_groups``)."""

import dataclasses

import pytest

from cepo.bases.tiny import char_tokenizer
from cepo.rollout.batch import concat, gather_groups
from tests.helpers import make_batch


def roles(text: str) -> list[str]:
    return ["decisive" if ch.isdigit() else "filler" for ch in text]


def batch(tok, prompts=("1+1=", "2+2="), answers=("2", "4"), responses=("2", "3", "4", "4"), **provenance):
    out = make_batch(tok, prompts, answers, responses, [1, 0, 1, 1], list(responses), 2)
    return out.with_provenance(**provenance) if provenance else out


def test_provenance_is_read_only_and_a_copy_shares_the_tensors():
    tok = char_tokenizer()
    a = batch(tok)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.provenance.answers = ["9", "9"]
    b = a.with_provenance(answers=["9", "9"], weight_version=3)
    assert a.provenance.answers == ["2", "4"] and a.provenance.weight_version == 0  # the original is kept
    assert b.provenance.answers == ["9", "9"] and b.provenance.weight_version == 3
    assert b.provenance.response_ids is a.provenance.response_ids  # unchanged fields are the same objects
    assert b.input_ids is a.input_ids and b.rewards is a.rewards  # tensors shared, not copied


def test_concat_keeps_each_sides_conversations_images_and_the_task_roles():
    tok = char_tokenizer()
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1="}]
    a = batch(tok, messages=[chat, [{"role": "user", "content": "2+2="}]], token_roles=roles)
    b = batch(tok, prompts=("3+3=",), answers=("6",), responses=("6", "5"), images=["img"])
    b = dataclasses.replace(b, rewards=b.rewards[:2], correct=b.correct[:2])
    merged = concat(a, b, tok.pad_token_id).provenance
    assert merged.prompts == ["1+1=", "2+2=", "3+3="] and merged.answers == ["2", "4", "6"]
    assert merged.conversation(0) == chat
    assert merged.conversation(2) == [{"role": "user", "content": "3+3="}]  # b had none: its prompt text
    assert merged.images == [None, None, "img"] and merged.image(2) == "img" and merged.image(0) is None
    assert merged.token_roles is roles and merged.responses == ["2", "3", "4", "4", "6", "5"]
    with pytest.raises(ValueError, match="weight versions 0 and 1"):
        concat(a, b.with_provenance(weight_version=1), tok.pad_token_id)


def test_gathered_groups_carry_their_own_provenance():
    tok = char_tokenizer()
    a = batch(tok, token_roles=roles, messages=[[{"role": "user", "content": p}] for p in ("1+1=", "2+2=")])
    b = batch(tok, prompts=("5+5=", "6+6="), answers=("10", "12"), responses=("10", "9", "12", "1"))
    b = b.with_provenance(token_roles=roles, messages=[[{"role": "user", "content": p}] for p in ("5+5=", "6+6=")])
    out = gather_groups([(b, 1), (a, 0)], tok.pad_token_id).provenance
    assert out.prompts == ["6+6=", "1+1="] and out.answers == ["12", "2"]
    assert out.responses == ["12", "1", "2", "3"] and out.extracted == ["12", "1", "2", "3"]
    assert [m[0]["content"] for m in out.messages] == ["6+6=", "1+1="]
    assert out.prompt_ids == [b.provenance.prompt_ids[1], a.provenance.prompt_ids[0]]
    assert out.token_roles is roles


def test_gathered_rounds_with_and_without_images_keep_each_groups_images():
    """Dynamic sampling's rounds of a mixed dataset: a round without any image has no image list;
    the gathered batch still gives every group its own images (none for a text prompt)."""
    tok = char_tokenizer()
    with_images = batch(tok, images=["img0", "img1"], vision="vision")
    text_only = batch(tok, prompts=("5+5=", "6+6="), answers=("10", "12"), responses=("10", "9", "12", "1"))
    for parts in ([(with_images, 1), (text_only, 0)], [(text_only, 0), (with_images, 1)]):
        out = gather_groups(parts, tok.pad_token_id).provenance
        assert [out.image(p) for p in range(2)] == [("img1" if b is with_images else None) for b, _ in parts]
        assert out.vision == "vision"
    chat = batch(tok, messages=[[{"role": "system", "content": "s"}, {"role": "user", "content": "1+1="}]] * 2)
    out = gather_groups([(text_only, 1), (chat, 0)], tok.pad_token_id).provenance
    assert out.conversation(0) == [{"role": "user", "content": "6+6="}] and out.conversation(1)[0]["content"] == "s"
