"""Vision-language policies on a tiny Qwen2-VL: image tokens aligned with features in rollouts,
scoring and teacher contexts; image-blind teachers; exact gradient accumulation with images."""

import pytest
import torch
from PIL import Image, ImageDraw

from cepo.bases.tiny import build_tiny_vl
from cepo.credit import NEG, POS, Contrastive, Uniform
from cepo.evidence import gather
from cepo.policy import PolicyRef, load_policy
from cepo.rollout.batch import pack
from cepo.rollout.engine import PromptImages, SamplingConfig
from cepo.rollout.generator import RolloutGenerator
from cepo.rollout.hf_engine import HFEngine
from cepo.scoring import Packed, Scorer
from cepo.tasks import Arithmetic, Example
from cepo.tasks.visual import VisualArithmetic
from cepo.teacher import Live, TeacherContexts
from tests.helpers import one_sgd_step


@pytest.fixture(scope="module")
def vl(tmp_path_factory):
    path = build_tiny_vl(tmp_path_factory.mktemp("vl") / "model", seed=0)
    model, tok, vision = load_policy(str(path), "off")
    return PolicyRef(model.eval(), tok, str(path), vision=vision)


def digits(a: int, b: int, size: int = 56) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 20), str(a), fill="black")
    draw.text((size // 2 + 4, 20), str(b), fill="black")
    return image


def rollouts(vl, examples, n=2, max_new=6):
    engine = HFEngine()
    sampler = RolloutGenerator(engine, Arithmetic(), SamplingConfig(max_new_tokens=max_new, seed=3), n, 1.0)
    sampler.connect(vl)
    sampler.sync()
    return sampler.rollout(examples), sampler


def unpadded_logprobs(vl, prompt_ids, images, response):
    """The response's log-probs from one plain forward of one row (the model places its own
    positions), with the vision tokens excluded from the distribution as the policy does."""
    ids = torch.tensor([prompt_ids + response])
    kinds = torch.zeros_like(ids)
    kinds[0, : len(prompt_ids)] = (ids[0, : len(prompt_ids)] == vl.vision.image_token_id).long()
    kwargs = {"mm_token_type_ids": kinds}
    if images is not None:
        kwargs.update(pixel_values=images.pixel_values, image_grid_thw=images.grid_thw)
    with torch.no_grad():
        logits = vl.model(input_ids=ids, **kwargs).logits[0, len(prompt_ids) - 1 : -1].float()
    logits[:, vl.vision.banned] = -1e9
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def test_image_tokens_match_the_features(vl):
    images = vl.vision.encode([digits(3, 8)])
    ids = vl.encode("<image>+=", images)
    assert ids.count(vl.vision.image_token_id) == images.tokens[0] == int(images.grid_thw.prod()) // 4 == 4
    with pytest.raises(ValueError, match="1 <image> placeholder"):
        vl.encode("<image>+=", None)
    inputs = vl.vision.model_inputs(vl.model, torch.tensor([ids]), torch.ones(1, len(ids)), len(ids), [images])
    assert inputs["position_ids"].shape == (3, 1, len(ids))
    (features,) = inputs["mm_encoder_outputs"]["image"].pooler_output
    assert features.shape == (4, vl.model.config.text_config.hidden_size)  # one feature per image token


def test_rollouts_see_the_image_and_are_scored_on_policy(vl):
    """Rollouts with images of different lengths in one left-padded batch: the engine's log-probs,
    the scorer's (micro-batched) and a plain forward of each row alone agree; the image matters."""
    examples = [
        Example("<image>+=", "11", images=[digits(3, 8)]),
        Example("1 <image>*=", "0", images=[digits(0, 9, 84)]),
    ]
    batch, _ = rollouts(vl, examples)
    # 56x56 -> 4 image tokens, 84x84 -> 9, each between <|vision_start|> and <|vision_end|>
    assert batch.provenance.images is not None and [len(p) for p in batch.provenance.prompt_ids] == [8, 15]
    assert not any(t in vl.vision.banned for r in batch.provenance.response_ids for t in r)
    seen = []  # positions the LM head computes logits for: the response columns only
    hook = vl.model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(out.shape[:-1]))
    width = int(batch.response_mask.sum(1).max())
    for size, share in ((0, False), (1, False), (0, True)):
        seen.clear()
        scored, _ = Scorer(size, share_prompts=share).logprobs(vl.model, batch.packed())
        rows = (
            [(len(batch.provenance.response_ids), width)]
            if size == 0
            else [(1, max(len(r), 1)) for r in batch.provenance.response_ids]
        )
        if share:  # after its check: each prompt's last position once, then the responses' others
            rows = [(len(batch.provenance.prompt_ids), 1), (len(batch.provenance.response_ids), width - 1)]
        assert sorted(seen[-2:] if share else seen) == sorted(rows)
        for i, response in enumerate(batch.provenance.response_ids):
            p = i // batch.group_size
            direct = unpadded_logprobs(vl, batch.provenance.prompt_ids[p], batch.provenance.images[p], response)
            assert torch.allclose(scored[i, : len(response)], direct, atol=1e-5), (size, i)
            assert torch.allclose(batch.engine_logprobs[i, : len(response)], direct, atol=1e-5)
    hook.remove()
    blank = unpadded_logprobs(
        vl,
        batch.provenance.prompt_ids[0],
        vl.vision.encode([Image.new("RGB", (56, 56), "white")]),
        batch.provenance.response_ids[0],
    )
    assert not torch.allclose(
        blank,
        unpadded_logprobs(
            vl, batch.provenance.prompt_ids[0], batch.provenance.images[0], batch.provenance.response_ids[0]
        ),
        atol=1e-4,
    )


@pytest.mark.parametrize("see", [True, False], ids=["image", "image-blind"])
def test_teacher_contexts_keep_or_drop_the_image(vl, see):
    examples = [Example("<image>+=", "11", images=[digits(3, 8)])]
    batch, _ = rollouts(vl, examples, n=4)
    batch.rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    batch.correct = batch.rewards >= 1
    batch = batch.with_provenance(extracted=["11", "7", "7", "7"])
    teacher = TeacherContexts(images=see)
    teacher.setup(vl)
    live = Live()
    live.setup(vl.model)
    scores = teacher.score(batch, torch.arange(4), True, True, live, Scorer(2))
    for row, feedback, got in ((0, "11", scores.pos), (1, "7", scores.neg)):
        text = ("<image>+=" if see else "+=") + " " + feedback  # raw: the feedback after the prompt
        images = batch.provenance.images[0] if see else None
        context = vl.encode(text, images)
        assert (vl.vision.image_token_id in context) == see
        direct = unpadded_logprobs(vl, context, images, batch.provenance.response_ids[row])
        assert torch.allclose(got[row, : len(batch.provenance.response_ids[row])], direct, atol=1e-5)
    inputs = gather(
        frozenset({POS, NEG}), batch, torch.tensor([1.5, -0.5, -0.5, -0.5]), vl.model, Scorer(0), teacher, live
    )
    assert inputs.pos_logprobs is not None and bool(inputs.has_negative.all())


def test_engine_rejects_images_without_its_own_loop(vl):
    engine = HFEngine(compact=False)
    engine.setup(vl.model, vl.tokenizer, vl.path)
    images = vl.vision.encode([digits(1, 2)])
    with pytest.raises(ValueError, match="compact"):
        engine.generate([vl.encode("<image>+=", images)], 1, SamplingConfig(), PromptImages([images], vl.vision))


def test_packing_is_unchanged_for_text_rows(vl):
    ids, attn, start, mask = pack([[5, 6, 7]], [[8, 9]], vl.tokenizer.pad_token_id)
    scored, _ = Scorer(0).logprobs(vl.model, Packed(ids, attn, start, mask, vision=vl.vision))
    assert torch.allclose(scored[0], unpadded_logprobs(vl, [5, 6, 7], None, [8, 9]), atol=1e-5)


class ParityVisual(VisualArithmetic):
    """Rewards that vary within a group even for a random model, so every step trains rows."""

    def reward(self, response, answer):
        return float(sum(map(ord, response)) % 2)


@pytest.mark.parametrize("credit", [Uniform(), Contrastive(beta=0.5)], ids=["grpo", "cepo"])
def test_gradient_with_images_is_exact_under_micro_batching(tmp_path, vl, credit):
    """One SGD step with whole mini-batches equals one with micro-batches of one row, with images
    (and, for CEPO, teacher passes that see them)."""
    task = ParityVisual(train_size=64, val_size=4, test_size=4)
    whole, module = one_sgd_step(tmp_path / "a", vl.path, task, 2, 4, credit=credit, micro_batch_size=0)
    split, _ = one_sgd_step(tmp_path / "b", vl.path, task, 2, 4, credit=credit, micro_batch_size=1)
    assert module.ref.vision is not None and not any(p.requires_grad for p in module.policy.model.visual.parameters())
    moved = max(float((whole[k] - vl.model.state_dict()[k]).abs().max()) for k in whole)
    assert moved > 1e-4
    for k in whole:
        assert torch.allclose(whole[k], split[k], atol=2e-6), k


def test_vl_fit_runs_from_its_config(tmp_path, vl):
    """configs/vl/default.yaml with CEPO trains and evaluates a VL policy end to end."""
    from cepo.cli import cli_main
    from tests.helpers import ROOT

    args = [
        "fit",
        "--config",
        str(ROOT / "configs" / "vl" / "default.yaml"),
        "--config",
        str(ROOT / "configs" / "credit" / "contrastive.yaml"),
    ]
    args += [
        "--model.model_path",
        vl.path,
        "--trainer.max_steps",
        "2",
        "--data.prompts_per_step",
        "2",
        "--data.group_size",
        "4",
    ]
    args += ["--data.eval_size", "4", "--data.eval_k", "2", "--data.task", "tests.test_vision.ParityVisual"]
    args += [
        "--data.task.init_args.train_size",
        "64",
        "--run_root",
        str(tmp_path),
        "--run_name",
        "vl",
        "--run_version",
        "v",
    ]
    cli_main(args)
    header = (tmp_path / "vl" / "v" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "credit/correct/weight_mean" in header or "credit/wrong/weight_mean" in header
    assert (tmp_path / "vl" / "v" / "samples" / "final.jsonl").is_file()


def test_vl_warmup_saves_a_loadable_base(tmp_path):
    from cepo.bases.warmup import run_warmup
    from cepo.bases.warmup_kinds import VLWarmupConfig

    cfg = VLWarmupConfig(max_steps=3, check_every=2, check_size=4, batch_size=4)
    summary = run_warmup(tmp_path / "base", cfg)
    assert summary["steps"] == 3 and len(summary["val_accuracy_curve"]) >= 1
    model, tok, vision = load_policy(str(tmp_path / "base"), "off")
    assert vision is not None and type(model).__name__ == "Qwen2VLForConditionalGeneration"


def test_each_prompt_is_encoded_once_per_pass(vl, monkeypatch):
    """Two prompts x 4 rollouts scored in one pass run the vision tower twice, not eight times."""
    examples = [Example("<image>+=", "11", images=[digits(3, 8)]), Example("<image>*=", "0", images=[digits(0, 9)])]
    batch, _ = rollouts(vl, examples, n=4)
    inner = vl.model.model
    calls = []
    original = inner.get_image_features
    monkeypatch.setattr(inner, "get_image_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    for share in (False, True):
        scorer = Scorer(0, share_prompts=share)
        scorer.logprobs(vl.model, batch.packed())  # the first also checks shared contexts on this model
        calls.clear()
        scorer.logprobs(vl.model, batch.packed())
        assert len(calls) == 2, share


CHAT = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


@pytest.mark.e2e
@pytest.mark.parametrize(
    "family",
    ["qwen2_vl", pytest.param("qwen2_5_vl", marks=pytest.mark.slow), pytest.param("qwen3_vl", marks=pytest.mark.slow)],
)
def test_a_vl_runs_export_loads_again(tmp_path, family, capsys):
    """fit on configs/vl/default.yaml (a ``cepo`` process) exports hf_model/ with everything loading
    it needs: ``cepo validate --model.model_path <run>/hf_model`` runs on it (in this process), and
    plain transformers loads the processor (image processor at the run's pixel bounds, tokenizer,
    chat template), the generation config and the model."""
    import importlib.util

    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer, GenerationConfig

    from cepo.cli import cli_main
    from tests.helpers import ROOT, run_cli

    source = build_tiny_vl(tmp_path / "base", family=family)
    tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer.chat_template = CHAT  # a hub model's tokenizer carries one; the tiny one does not
    tokenizer.save_pretrained(source)
    sizes = ["--data.eval_size", "2", "--data.eval_k", "1", "--data.sampling.max_new_tokens", "4"]
    sizes += ["--data.eval_sampling.max_new_tokens", "4"]
    vl_config = ["--config", str(ROOT / "configs" / "vl" / "default.yaml")]
    fit = [*vl_config, "--model.model_path", str(source), "--trainer.max_steps", "1", "--data.prompts_per_step", "2"]
    fit += ["--data.group_size", "2", "--data.task.init_args.train_size", "16", "--model.vision.max_pixels", "9000"]
    fit += [*sizes, "--run_root", str(tmp_path), "--run_name", "vl", "--run_version", "v"]
    done = run_cli(["fit", *fit])
    assert done.returncode == 0, done.stderr[-3000:]
    export = tmp_path / "vl" / "v" / "hf_model"

    validate = [*vl_config, "--model.model_path", str(export), *sizes, "--run_root", str(tmp_path)]
    capsys.readouterr()
    cli_main(["validate", *validate, "--run_name", "again", "--run_version", "v"])
    assert "val/acc" in capsys.readouterr().out

    if importlib.util.find_spec("torchvision") is not None:
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(export)
        image_processor, tokenizer = processor.image_processor, processor.tokenizer
    else:  # transformers 5 builds a Qwen-VL processor's video processor with torchvision only: its parts
        image_processor, tokenizer = AutoImageProcessor.from_pretrained(export), AutoTokenizer.from_pretrained(export)
    assert tokenizer.chat_template == CHAT
    assert image_processor.size["longest_edge"] == 9000  # the run's --model.vision.max_pixels
    model = AutoModelForImageTextToText.from_pretrained(export)
    assert model.config.model_type == family
    assert GenerationConfig.from_pretrained(export).eos_token_id == tokenizer.eos_token_id
    _, _, vision = load_policy(str(export), "off")
    images = vision.encode([digits(3, 8)])
    prompt = vision.prompt_ids("<image>+=", images)
    ids = torch.tensor([prompt])
    inputs = vision.model_inputs(model, ids, torch.ones_like(ids), len(prompt), [images])
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=ids, **inputs).logits).all()


def test_an_encoded_image_is_decoded_at_the_processors_size_with_the_same_pixels(vl, tmp_path):
    """A row's encoded image is decoded straight to the size the processor resizes it to: the
    processed pixels and grid equal those of the full-size image, and the kept raw image is small."""
    import io

    from cepo.tasks.images import open_image

    for size in ((1600, 1200), (57, 91), (300, 30)):
        full = digits(3, 8, size=max(size)).crop((0, 0, *size))
        buf = io.BytesIO()
        full.save(buf, format="PNG")
        encoded = open_image({"bytes": buf.getvalue()}, tmp_path, "f:1")
        want, got = vl.vision.encode([full]), vl.vision.encode([encoded])
        assert torch.equal(got.grid_thw, want.grid_thw) and torch.equal(got.pixel_values, want.pixel_values)
        (raw,) = got.raw
        w, h = raw.size
        assert (h // 14, w // 14) == tuple(got.grid_thw[0, 1:].tolist()) and w * h <= 112 * 112  # 14-pixel patches


def test_pixel_bounds_resize_through_the_processors_size_without_deprecated_arguments(vl):
    """``model.vision.max_pixels`` reaches the processor as its ``size`` area bound (the
    ``max_pixels=`` call argument is deprecated, gone in transformers 5.23): the image is resized
    to :meth:`Vision.fit`'s size, within the bound."""
    import copy
    import warnings

    big = Image.new("RGB", (224, 168), (20, 40, 60))
    patch = vl.vision.processor.patch_size
    plain = vl.vision.encode([big])
    bounded = copy.copy(vl.vision)
    bounded.max_pixels = 4000
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        small = bounded.encode([big])
    w, h = bounded.fit(224, 168)
    pw, ph = vl.vision.fit(224, 168)  # within the processor's own bounds
    assert w * h <= 4000 < pw * ph
    assert small.grid_thw.tolist() == [[1, h // patch, w // patch]]
    assert plain.grid_thw.tolist() == [[1, ph // patch, pw // patch]]
    assert small.tokens[0] < plain.tokens[0]
    # engines that process images themselves (vLLM) get them at that size, so they need no bounds
    assert small.raw[0].size == (w, h) and plain.raw[0].size == (pw, ph)
