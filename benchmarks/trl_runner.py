"""TRL's side of ``benchmarks/vs_trl.py``: ``trl.GRPOTrainer`` on a model folder and a JSONL file.

Runs in ``.venv-trl`` (``scripts/setup_trl.sh``) and imports no cepo: the reward is the
arithmetic task's exact-match verifier, restated here (:func:`final_number`, :func:`reward`;
``tests/test_benchmarks.py`` checks it gives cepo's verdicts). Settings come as one JSON file
(``vs_trl.trl_settings`` writes it): the ``GRPOConfig`` keyword arguments, the LoRA settings (or
none), the chat flag, ``record``. Writes ``<out>/result.json`` (per-step wall times, per-step
rewards, TRL's whole log history, the process time, versions) and the trained policy as a Hugging
Face folder in ``<out>/model`` (LoRA merged), which ``vs_trl.py`` evaluates with cepo's evaluator.
With ``record``, also ``<out>/batches.pt``: every generation batch as TRL trains on it (prompt and
completion ids and masks, advantages, rewards), which ``benchmarks/trl_replay.py`` replays
through cepo's update.

    .venv-trl/bin/python benchmarks/trl_runner.py SETTINGS.json
"""

from __future__ import annotations

import json
import re
import sys
import time

T_START = time.perf_counter()


def final_number(response: str) -> str | None:
    """The whole number after the last ``=`` of a worked response (cepo.tasks.arithmetic's rule)."""
    tail = response.split("=")[-1].strip()
    return tail if tail.isdigit() else None


_BOXED = re.compile(r"\\boxed\{")
_NUMBER = re.compile(r"-?\d(?:[\d,]*\d)?(?:\.\d+)?")
_THOUSANDS = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces balanced), or None (cepo.tasks.jsonl's rule)."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i, depth = starts[-1], 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
    return None


def normalise(answer: str) -> str:
    """No whitespace or ``$``, no trailing ``.`` or ``.0``, commas dropped only from a whole answer
    written with thousands separators (``1,000``; ``(1,5)`` keeps its comma): cepo.tasks.jsonl's rule."""
    a = answer.replace("\\$", "").replace("$", "").replace("{,}", ",").strip().rstrip(".").strip()
    if _THOUSANDS.fullmatch(a):
        a = a.replace(",", "")
    a = re.sub(r"\s+", "", a)
    if re.fullmatch(r"-?\d+\.0+", a):
        a = a.split(".")[0]
    return a


def extract_exact(response: str) -> str | None:
    """The last boxed answer, else the ``####`` tail, else the last number, normalised
    (``cepo.tasks.JsonlTask(verifier="exact")``'s extraction)."""
    boxed = last_boxed(response)
    if boxed is not None:
        return normalise(boxed)
    if "####" in response:
        tail = response.split("####")[-1].split()
        return normalise(tail[0].rstrip(",")) if tail else None  # "#### 18, so": 18
    numbers = _NUMBER.findall(response)
    return normalise(numbers[-1]) if numbers else None


def is_correct(response: str, answer: str, verifier: str) -> bool:
    """cepo's verdict: ``final_number`` (the arithmetic task) or ``exact`` (JsonlTask, exact)."""
    if verifier == "final_number":
        got = final_number(response)
        return got is not None and got == answer.strip()
    if verifier == "exact":
        got = extract_exact(response)
        return bool(got) and got == normalise(answer)
    raise ValueError(f"unknown verifier {verifier!r}")


def completion_text(completion) -> str:
    """A TRL completion as text: a string, or (conversational prompts) a list of messages."""
    if isinstance(completion, str):
        return completion
    return completion[-1]["content"]


def make_reward(verifier: str):
    """A TRL reward function: 1.0 for a response cepo's verifier accepts, else 0.0."""

    def reward(completions, answer, **_) -> list[float]:
        return [float(is_correct(completion_text(c), str(ref), verifier)) for c, ref in zip(completions, answer)]

    reward.__name__ = f"correct_{verifier}"
    return reward


def load_rows(path: str, chat: bool) -> list[dict]:
    rows = []
    for line in open(path):
        row = json.loads(line)
        prompt = [{"role": "user", "content": row["prompt"]}] if chat else row["prompt"]
        rows.append({"prompt": prompt, "answer": row["answer"]})
    return rows


def main(settings_path: str) -> None:
    settings = json.load(open(settings_path))
    import torch

    torch.set_num_threads(int(settings.get("threads", 1)))
    import importlib.metadata as md
    import shutil
    from pathlib import Path

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    class StepClock(TrainerCallback):
        """Wall time of every optimizer step: from the previous step's end (or the start of
        training) to this step's end, generation, reward and logging included."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.begin = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())

    model_path = settings["model_path"]
    out = Path(settings["out"])
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    peft_config = None
    if settings.get("lora"):
        from peft import LoraConfig

        lora = settings["lora"]
        peft_config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"],
            task_type="CAUSAL_LM",
        )
    train = Dataset.from_list(load_rows(settings["train_file"], settings["chat"]))
    reward_fn = make_reward(settings["verifier"])
    rewards_seen: list[list[float]] = []  # each generation batch's rewards (recorded with the batch)

    def reward(*args, **kwargs) -> list[float]:
        rewards_seen.append(reward_fn(*args, **kwargs))
        return rewards_seen[-1]

    reward.__name__ = reward_fn.__name__
    config = GRPOConfig(output_dir=str(out / "trainer"), **settings["grpo_config"])
    clock = StepClock()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=config,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[clock],
    )
    # time TRL's generation stage (generate, decode, reward, advantages: `_generate_and_score_completions`)
    gen_seconds = []
    generate_and_score = trainer._generate_and_score_completions

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return generate_and_score(*args, **kwargs)
        finally:
            gen_seconds.append(time.perf_counter() - t0)

    trainer._generate_and_score_completions = timed
    batches: list[dict] = []
    if settings.get("record"):  # every generation batch, group-major, before TRL shuffles it into micro-batches

        def recorded(inputs):
            out = timed(inputs)
            batch = {k: v.detach().cpu().clone() for k, v in out.items() if torch.is_tensor(v) and v.dim() > 0}
            batch["rewards"] = torch.tensor(rewards_seen[-1], dtype=torch.float)
            batch["prompts"] = [row["prompt"] for row in inputs]
            batch["answers"] = [row["answer"] for row in inputs]
            batches.append(batch)
            return out

        trainer._generate_and_score_completions = recorded
    t_train = time.perf_counter()
    trainer.train()
    t_trained = time.perf_counter()
    policy = trainer.model
    if hasattr(policy, "merge_and_unload"):
        policy = policy.merge_and_unload()
    policy.save_pretrained(out / "model")
    for f in Path(model_path).iterdir():  # the tokenizer files as they were (cepo's char tokenizer)
        if f.is_file() and not (out / "model" / f.name).exists() and "safetensors" not in f.name:
            shutil.copy(f, out / "model" / f.name)
    if settings.get("record"):
        torch.save(batches, out / "batches.pt")
    marks = [clock.begin, *clock.ends]
    logs = [h for h in trainer.state.log_history if "reward" in h]
    result = {
        "step_seconds": [b - a for a, b in zip(marks, marks[1:])],
        "generate_seconds": gen_seconds,
        "rewards": [h["reward"] for h in logs],
        "log_history": trainer.state.log_history,
        "train_seconds": t_trained - t_train,
        "setup_seconds": t_train - T_START,
        "process_seconds": time.perf_counter() - T_START,
        "steps": trainer.state.global_step,
        "versions": {p: md.version(p) for p in ("trl", "torch", "transformers", "peft", "accelerate", "datasets")},
        "model": str(out / "model"),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2))
    per_step = ("step_seconds", "generate_seconds", "rewards", "log_history")
    print(json.dumps({k: v for k, v in result.items() if k not in per_step}))


if __name__ == "__main__":
    main(sys.argv[1])
