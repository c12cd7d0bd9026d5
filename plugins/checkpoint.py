"""Built-in `checkpoint` generator: the current model writes the next cycle's candidates.

Each prompt is framed the way the seed corpus renders chat ("User: ...\\nDeep Tree Echo:"),
after a seed example that rides along for style; the candidate is the persona's reply only.
Sampling uses a generator seeded per request, so a resumed cycle writes the same texts.
"""

from __future__ import annotations

from collections.abc import Iterator

from dte_aar.agent import Agent
from dte_aar.hookspecs import Candidate, CycleContext, GenerationRequest, hookimpl
from dte_aar.train import resolve_device

PERSONA = "Deep Tree Echo"
USER = "User"


def format_prompt(prompt: str, style_example: str | None = None) -> str:
    """The chat frame the model learned from the seed corpus, ending where the reply starts."""
    turn = f"{USER}: {prompt.strip()}\n{PERSONA}:"
    return f"{style_example.strip()}\n\n{turn}" if style_example else turn


def reply_only(text: str) -> str:
    """Cut the continuation where the model starts writing the next user turn."""
    cut = text.find(f"\n{USER}:")
    return (text if cut < 0 else text[:cut]).strip()


class CheckpointGenerator:
    name = "checkpoint"

    def generate(self, requests: list[GenerationRequest], ctx: CycleContext) -> Iterator[Candidate]:
        if ctx.checkpoint is None or not requests:  # cycle 0: no model to ask yet
            return
        g = ctx.settings.generate
        device = resolve_device(ctx.settings.train.device)
        agent = Agent.load(ctx.checkpoint.path, ctx.workspace, ctx.checkpoint.sha256, device=device)
        model = f"checkpoint:cycle-{ctx.checkpoint.cycle}"
        for request in requests:
            completion = agent.generate(
                format_prompt(request.prompt, request.style_example),
                max_new_tokens=g.max_new_tokens,
                temperature=g.temperature,
                top_k=g.top_k or None,
                seed=request.seed,
            )
            yield Candidate(
                slot=request.slot,
                text=reply_only(completion.text),
                prompt=request.prompt,
                model=model,
                tokens=completion.tokens,
            )


@hookimpl
def register_generators(register) -> None:
    register(CheckpointGenerator())
