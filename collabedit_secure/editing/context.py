"""Context templates (MEMIT `get_context_templates`), made reproducible with a fixed seed.

MEMIT samples 5 short continuations (top-k 5, <= 10 tokens including the prompt) of "The",
"Therefore", "Because", "I", "You" with the unedited model, replaces braces, appends ". {}" and uses
[["{}"], [t1..t5]]. All parties of a federation must use the same templates: the coordinator
generates them once and distributes them; `edit` accepts them explicitly.
"""

from __future__ import annotations

import torch

SEED_PROMPTS = ("The", "Therefore", "Because", "I", "You")
TOP_K = 5


@torch.no_grad()
def sample_top_k(model, tok, prompt: str, max_tokens: int, generator: torch.Generator) -> str:
    """One top-k sample; `max_tokens` counts the prompt's tokens too, as in MEMIT's generate_fast."""
    device = next(model.parameters()).device
    ids = tok(prompt, return_tensors="pt")["input_ids"].to(device)
    while ids.shape[1] < max_tokens:
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].float().cpu()
        top_logits, top_ids = logits.topk(TOP_K)
        choice = torch.multinomial(torch.softmax(top_logits, -1), 1, generator=generator)
        ids = torch.cat([ids, top_ids[choice].view(1, 1).to(device)], dim=1)
    return tok.decode(ids[0], skip_special_tokens=True)


def generate_context_templates(model, tok, seed: int = 0, length_params=((10, 5),)) -> list[list[str]]:
    """[["{}"], [one template per sample]] sampled from the model as it stands (call it unedited)."""
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        templates = [["{}"]]
        for max_tokens, count in length_params:
            samples = [
                sample_top_k(model, tok, prompt, max_tokens, generator)
                for prompt in SEED_PROMPTS
                for _ in range(count // len(SEED_PROMPTS))
            ]
            templates.append([s.replace("{", " ").replace("}", " ") + ". {}" for s in samples])
    finally:
        model.train(was_training)
    return templates


def check_templates(templates) -> list[list[str]]:
    """Templates given from outside (e.g. by a coordinator) must each hold exactly one "{}"."""
    if not templates or any(not group for group in templates):
        raise ValueError("context templates must be a non-empty list of non-empty groups")
    for group in templates:
        for template in group:
            if (not isinstance(template, str) or template.count("{}") != 1
                    or any(brace in template.replace("{}", "") for brace in "{}")):
                raise ValueError(f"context template must contain exactly one '{{}}' and no other brace: {template!r}")
    return [list(group) for group in templates]
