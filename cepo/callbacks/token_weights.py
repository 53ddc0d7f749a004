"""Token-weight logging: what the credit rule did to each token, as numbers and as a picture.

Whatever the credit rule, it shows what the rule's :class:`~cepo.credit.CreditOutput` carries:
per step (whenever the rule applied a per-token weight) the mean and quantiles of the weight and
of the evidence ``Delta`` behind it, the fraction of tokens at a bound, and the fraction with
``|Delta|`` above a threshold, for correct and wrong rollouts separately; and, for tasks that
label token roles (the built-in arithmetic: decisive / copied / filler), the mean ``|Delta|`` per
role. Every ``every_n_steps`` steps: a self-contained HTML page and a PNG in
``<run dir>/token_weights/`` showing sampled rollouts with each token coloured by its weight
(``Delta``, ``w`` and ``Â`` on hover), correct and wrong side by side, with the rule's own legend;
the PNG also goes to TensorBoard. For a vision-language run each rollout shows its prompt's images
as thumbnails next to its tokens, embedded in the page as PNG data URLs, at most
``thumbnail_px`` pixels a side (the JSON companion keeps the text only).
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from pathlib import Path

import lightning as L
import torch

from cepo.step_stats import log_step

QUANTILES = (0.1, 0.5, 0.9)
MAX_THUMBNAILS = 4
"""Images shown per rollout (a prompt's first ones)."""


def thumbnail(image, side: int) -> str:
    """A ``data:image/png;base64,...`` URL of ``image`` (PIL) shrunk to fit ``side`` x ``side``
    pixels, its aspect ratio kept (never enlarged)."""
    small = image.convert("RGB")
    small.thumbnail((side, side))
    buf = io.BytesIO()
    small.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def prompt_thumbnails(batch, prompt: int, side: int) -> list[str]:
    """Thumbnails of prompt ``prompt``'s images (the processed ones, ``Images.raw``), if any."""
    images = batch.provenance.image(prompt)
    raw = getattr(images, "raw", None) or []
    return [thumbnail(im, side) for im in raw[:MAX_THUMBNAILS]]


def token_texts(tokenizer, ids: list[int], cache: dict[int, str] | None = None) -> list[str]:
    """The text of each token (decoded one by one, special tokens shown as their names);
    ``cache`` keeps the texts of ``tokenizer``'s tokens decoded so far."""
    if cache is None:
        return [tokenizer.decode([i]) for i in ids]
    for i in ids:
        if i not in cache:
            cache[i] = tokenizer.decode([i])
    return [cache[i] for i in ids]


def token_roles_of(roles_fn, tokenizer, ids: list[int], cache: dict[int, str] | None = None) -> list[str] | None:
    """Role of each token from ``roles_fn``, a task's per-character roles of a response text (first
    character wins); None without one."""
    if roles_fn is None:
        return None
    pieces = token_texts(tokenizer, ids, cache)
    eos = tokenizer.eos_token_id  # a lookup on every read
    text = "".join(p if i != eos else "" for p, i in zip(pieces, ids))
    char_roles = roles_fn(text)
    out, pos = [], 0
    for piece, i in zip(pieces, ids):
        if i == eos or not piece:
            out.append("special")
            continue
        out.append(char_roles[pos] if pos < len(char_roles) else "special")
        pos += len(piece)
    return out


def summarise(values: torch.Tensor, prefix: str) -> dict[str, float]:
    if values.numel() == 0:
        return {}
    out = {f"{prefix}_mean": float(values.mean())}
    qs = torch.quantile(values.float(), torch.tensor(QUANTILES))
    out.update({f"{prefix}_q{int(q * 100)}": float(v) for q, v in zip(QUANTILES, qs)})
    return out


def _colour(weight: float, lo: float, hi: float) -> str:
    """Green above 1, red below, white at 1; saturated at the clip bounds."""
    if weight >= 1:
        a = min((weight - 1) / max(hi - 1, 1e-6), 1.0)
        return f"rgba(30,160,60,{a:.2f})"
    a = min((1 - weight) / max(1 - lo, 1e-6), 1.0)
    return f"rgba(210,40,40,{a:.2f})"


class TokenWeightLogger(L.Callback):
    """Logs credit statistics each step and renders token heatmaps every ``every_n_steps``.

    Args:
        every_n_steps: rollout steps between heatmap pages (0: never).
        num_examples: rollouts shown per side (correct / wrong).
        delta_threshold: ``|Delta|`` above this counts as "decisive evidence".
        thumbnail_px: the largest side of a prompt image's thumbnail on the pages (VL runs).
    """

    def __init__(
        self, every_n_steps: int = 25, num_examples: int = 4, delta_threshold: float = 0.5, thumbnail_px: int = 128
    ) -> None:
        if thumbnail_px < 8:
            raise ValueError(f"token_weights.thumbnail_px must be >= 8, got {thumbnail_px}")
        self.thumbnail_px = thumbnail_px
        self.every_n_steps = every_n_steps
        self.num_examples = num_examples
        self.delta_threshold = delta_threshold
        self.role_totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.pieces: dict[int, str] = {}  # token texts of the policy's tokenizer
        self.out_dir: Path | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        # On every process: trainer.log_dir broadcasts rank 0's directory, a collective. Read
        # only on rank 0 (in render), it paired with the next collective of the other ranks and
        # hung or crashed every evidence-reading rule at its second step under DDP and FSDP.
        self.out_dir = Path(trainer.log_dir or trainer.default_root_dir) / "token_weights"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        record = pl_module.last_credit
        if record is None or record.output.weight is None:
            return  # no per-token weight this step (uniform credit, or beta == 0)
        metrics = self.step_metrics(record, pl_module.tokenizer)
        step = pl_module.rl_step
        log_step(trainer.loggers, metrics, step, latest=trainer.callback_metrics)  # only what the step measured
        if self.every_n_steps and trainer.is_global_zero and (step == 1 or step % self.every_n_steps == 0):
            out_dir = self.out_dir or Path(trainer.default_root_dir) / "token_weights"
            self.render(record, step, pl_module.tokenizer, out_dir, trainer.loggers, trainer.global_step)

    def step_metrics(self, record, tokenizer) -> dict[str, float]:
        batch, out = record.batch, record.output
        mask = batch.response_mask
        metrics: dict[str, float] = {}
        # rows with A = 0 get no credit and no evidence: leave them out
        credited = record.inputs.advantages != 0
        for name, rows in (("correct", batch.correct), ("wrong", ~batch.correct)):
            m = mask & (rows & credited)[:, None]
            if not m.any():
                continue
            metrics.update(summarise(out.weight[m], f"credit/{name}/weight"))
            if out.clipped is not None:
                metrics[f"credit/{name}/clip_frac"] = float(out.clipped[m].float().mean())
            if out.delta is not None:
                delta = out.delta[m]
                metrics.update(summarise(delta, f"credit/{name}/delta"))
                metrics[f"credit/{name}/abs_delta_mean"] = float(delta.abs().mean())
                metrics[f"credit/{name}/big_delta_frac"] = float((delta.abs() > self.delta_threshold).float().mean())
        if record.inputs.has_negative is not None:
            metrics["credit/has_negative_frac"] = float(record.inputs.has_negative.float().mean())
        role_sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        abs_delta = out.delta.abs().tolist() if out.delta is not None else []  # one host read
        for i, ids in enumerate(batch.provenance.response_ids if out.delta is not None else []):
            if not credited[i]:
                continue
            roles = token_roles_of(batch.provenance.token_roles, tokenizer, ids, self.pieces)
            if roles is None:
                break
            for t, role in enumerate(roles[: mask.shape[1]]):
                d = abs_delta[i][t]
                role_sums[role][0] += d
                role_sums[role][1] += 1
        for role, (s, n) in role_sums.items():
            if role != "special" and n:
                metrics[f"credit/role/{role}/abs_delta_mean"] = s / n
                self.role_totals[role][0] += s
                self.role_totals[role][1] += n
        return metrics

    def role_summary(self) -> dict[str, float]:
        """Mean ``|Delta|`` per token role over every step seen so far."""
        return {r: s / n for r, (s, n) in self.role_totals.items() if n and r != "special"}

    # -- rendering ---------------------------------------------------------------------
    def pick(self, batch, correct: bool) -> list[int]:
        rows = [i for i in range(batch.num_rollouts) if bool(batch.correct[i]) == correct]
        return rows[: self.num_examples]

    def render(self, record, step: int, tok, out_dir: Path, loggers=(), global_step: int = 0) -> Path:
        """Write rollout step ``step``'s page, its JSON and PNG to ``out_dir``, and give the figure to
        each logger that takes figures (TensorBoard) at ``global_step``."""
        out_dir.mkdir(parents=True, exist_ok=True)
        batch, out = record.batch, record.output
        lo, hi = out.weight_range
        columns, thumbs = {}, {}
        for label, correct in (("correct", True), ("wrong", False)):
            items = []
            for i in self.pick(batch, correct):
                ids = batch.provenance.response_ids[i]
                cells = []
                for t, piece in enumerate(token_texts(tok, ids)):
                    w, a = float(out.weight[i, t]), float(out.token_advantages[i, t])
                    d = float(out.delta[i, t]) if out.delta is not None else 0.0
                    cells.append((piece, w, d, a))
                items.append(
                    {
                        "row": i,
                        "prompt": batch.provenance.prompts[i // batch.group_size],
                        "answer": batch.provenance.answers[i // batch.group_size],
                        "reward": float(batch.rewards[i]),
                        "tokens": cells,
                        "contexts": (record.inputs.contexts or {}).get(i // batch.group_size),
                    }
                )
                thumbs[i] = prompt_thumbnails(batch, i // batch.group_size, self.thumbnail_px)
            columns[label] = items
        page = out_dir / f"step_{step:05d}.html"
        page.write_text(self.html_page(columns, step, record.credit, out.legend, lo, hi, thumbs), encoding="utf-8")
        (out_dir / f"step_{step:05d}.json").write_text(json.dumps(columns))
        png = out_dir / f"step_{step:05d}.png"
        fig = self.figure(columns, step, lo, hi)
        fig.savefig(png, dpi=100)
        for lg in loggers:
            exp = getattr(lg, "experiment", None)
            if hasattr(exp, "add_figure"):
                exp.add_figure("credit/token_weights", fig, global_step=global_step)
        import matplotlib.pyplot as plt

        plt.close(fig)
        return page

    def html_page(self, columns, step, credit, legend, lo, hi, thumbs: dict[int, list[str]] | None = None) -> str:
        """The page; ``thumbs`` maps a rollout's row to its prompt's image thumbnails (data URLs)."""

        def render_item(item) -> str:
            spans = []
            for piece, w, d, a in item["tokens"]:
                shown = html.escape(piece).replace(" ", "&nbsp;").replace("\n", "&#9166;") or "&empty;"
                spans.append(
                    f'<span style="background:{_colour(w, lo, hi)}" '
                    f'title="w={w:.3f}  Delta={d:+.3f}  A_t={a:+.3f}">{shown}</span>'
                )
            head = (
                f'<div class="p">{html.escape(item["prompt"])} &rarr; reference '
                f"{html.escape(item['answer'])} (reward {item['reward']:.2f})</div>"
            )
            for name, text in zip(("c+ teacher", "c- teacher"), item.get("contexts") or ()):
                if text is not None:
                    shown = html.escape(text)
                    head += f'<details class="p"><summary>{name} prompt</summary><pre>{shown}</pre></details>'
            images = "".join(
                f'<img src="{url}" alt="image {k} of the prompt">'
                for k, url in enumerate((thumbs or {}).get(item["row"], []))
            )
            tokens = f'{head}<div class="t">{"".join(spans)}</div>'
            if images:
                return f'<div class="r"><div class="v"><div class="i">{images}</div><div>{tokens}</div></div></div>'
            return f'<div class="r">{tokens}</div>'

        cols = ""
        for label, items in columns.items():
            body = "".join(render_item(i) for i in items) or "<p>none this step</p>"
            cols += f'<div class="c"><h2>{label}</h2>{body}</div>'
        title = f"cepo token weights, step {step}"
        return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:1em}} .w{{display:flex;gap:2em}} .c{{flex:1}}
.r{{margin:.6em 0;padding:.4em;border:1px solid #ddd}} .p{{color:#555;font-size:90%}}
.t{{font-family:monospace;font-size:130%;line-height:1.6}} .t span{{padding:1px 0}}
.v{{display:flex;gap:.6em;align-items:flex-start}}
.i img{{display:block;margin-bottom:.3em;border:1px solid #ccc}}</style></head>
<body><h1>Token weights at step {step}</h1>
<p>{html.escape(repr(credit))}. Colour: {html.escape(legend)} (saturated at [{lo:.2f}, {hi:.2f}]).
Hover a token for w, Delta and its token advantage.</p><div class="w">{cols}</div></body></html>"""

    def figure(self, columns, step, lo, hi):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import to_rgba

        rows = max(1, max(len(v) for v in columns.values()))
        fig, axes = plt.subplots(1, 2, figsize=(14, 0.7 * rows + 1.2))
        for ax, (label, items) in zip(axes, columns.items()):
            ax.set_title(f"{label} rollouts, step {step}")
            ax.axis("off")
            for r, item in enumerate(items):
                y = 1 - (r + 0.5) / rows
                x = 0.0
                for piece, w, _, _ in item["tokens"][:60]:
                    rgba = _colour(w, lo, hi)
                    vals = [float(v) for v in rgba[5:-1].split(",")]
                    colour = to_rgba((vals[0] / 255, vals[1] / 255, vals[2] / 255), vals[3])
                    shown = piece.replace("\n", "\u23ce") or "\u2205"
                    ax.text(
                        x,
                        y,
                        shown,
                        family="monospace",
                        fontsize=9,
                        va="center",
                        bbox=dict(facecolor=colour, edgecolor="none", pad=1.0),
                    )
                    x += 0.016 * max(len(shown), 1)
        fig.tight_layout()
        return fig
