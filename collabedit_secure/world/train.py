"""Train a small GPT-2 on the world corpus until it knows its facts (CounterFact per-token-NLL rule).

Texts are joined with EOS and packed into blocks of n_positions tokens; each epoch reshuffles the
text order with a seeded generator, so the run is deterministic. After every epoch a sample of
records is scored; once it clears target + margin, `final_check_records` records (1,000 by
default) are scored in float32 (the final check).
"""

from __future__ import annotations

import math
import random
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from collabedit_secure.eval.nll import target_nll
from collabedit_secure.progress import note, progress

from .config import WorldConfig


def make_model(config: WorldConfig, vocab_size: int, eos_id: int) -> GPT2LMHeadModel:
    gpt2 = GPT2Config(vocab_size=vocab_size, n_positions=config.n_positions, n_embd=config.n_embd,
                      n_layer=config.n_layer, n_head=config.n_head, n_inner=config.n_inner,
                      activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                      bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id, tie_word_embeddings=True)
    return GPT2LMHeadModel(gpt2)


def pack_epoch(token_lists: list[list[int]], weight_lists: list[list[float]], eos_id: int, block: int,
               rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Shuffle texts, join as text EOS text EOS ..., cut into (n_blocks, block) rows (tail dropped)."""
    order = list(range(len(token_lists)))
    rng.shuffle(order)
    stream: list[int] = []
    weights: list[float] = []
    for i in order:
        stream += token_lists[i] + [eos_id]
        weights += weight_lists[i] + [1.0]
    n_blocks = len(stream) // block
    if n_blocks == 0:
        raise ValueError(f"corpus has {len(stream)} tokens, fewer than one block of {block}")
    cut = n_blocks * block
    return torch.tensor(stream[:cut]).view(n_blocks, block), torch.tensor(weights[:cut]).view(n_blocks, block)


def object_weights(tok, texts: list[str], objects: list[str], weight: float) -> tuple[list, list]:
    """Token ids per text, and a loss weight per token: `weight` on the object that ends a fact sentence.

    Facts are what the model must memorise; templates and filler are learned in a few steps anyway,
    so up-weighting the object tokens spends the gradient where the knowledge is.
    """
    by_length = sorted(set(objects), key=len, reverse=True)
    enc = tok(texts, return_offsets_mapping=True)
    weight_lists = []
    for text, offsets in zip(texts, enc["offset_mapping"]):
        spans, pos = [], 0
        for sentence in text.split(". "):
            end = pos + len(sentence.rstrip("."))
            obj = next((o for o in by_length if text[:end].endswith(" " + o)), None)
            if obj is not None:
                spans.append((end - len(obj) - 1, end))
            pos += len(sentence) + 2
        weight_lists.append([weight if any(a <= start < b for a, b in spans) else 1.0 for start, _ in offsets])
    return enc["input_ids"], weight_lists


def weighted_lm_loss(logits: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, position t predicting ids[t+1], averaged with per-token weights."""
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    w = weights[:, 1:].reshape(-1)
    return (ce * w).sum() / w.sum()


def lr_at(step: int, total: int, config: WorldConfig) -> float:
    """Linear warmup, then cosine from lr down to min_lr_ratio * lr at `total`, flat afterwards."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, total - config.warmup_steps))
    floor = config.min_lr_ratio * config.lr
    return floor + 0.5 * (config.lr - floor) * (1 + math.cos(math.pi * progress))


def knowledge(model, tok, records: list[dict]) -> dict[str, float]:
    """Fraction of rewrite / paraphrase / neighbourhood prompts where NLL(true) < NLL(new)."""
    model.eval()
    prefixes, trues, news, kinds = [], [], [], []
    for rec in records:
        rw = rec["requested_rewrite"]
        prompts = ([("rewrite", rw["prompt"].format(rw["subject"]))]
                   + [("paraphrase", p) for p in rec["paraphrase_prompts"]]
                   + [("neighborhood", p) for p in rec["neighborhood_prompts"]])
        for kind, p in prompts:
            prefixes.append(p)
            trues.append(rw["target_true"]["str"])
            news.append(rw["target_new"]["str"])
            kinds.append(kind)
    nll_true = target_nll(model, tok, prefixes, trues)
    nll_new = target_nll(model, tok, prefixes, news)
    knows = (nll_true < nll_new).tolist()
    out = {}
    for kind in ("rewrite", "paraphrase", "neighborhood"):
        hits = [k for k, kd in zip(knows, kinds) if kd == kind]
        out[kind] = sum(hits) / len(hits)
    return out


def passes(scores: dict[str, float], bar: float) -> bool:
    return all(scores[k] >= bar for k in ("rewrite", "paraphrase", "neighborhood"))


def train_model(config: WorldConfig, tok, corpus: list[str], records: list[dict], objects: list[str],
                progress: bool = True):
    """Returns (model in eval mode, knowledge report). Raises if required knowledge is never reached.

    Trains on `config.threads` threads and gives the caller back its own thread count afterwards
    (a 16-core process that builds the world first must not edit on 2 threads)."""
    caller_threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        return _train(config, tok, corpus, records, objects, progress)
    finally:
        torch.set_num_threads(caller_threads)


def _train(config: WorldConfig, tok, corpus: list[str], records: list[dict], objects: list[str],
           show_progress: bool):
    torch.manual_seed(config.train_seed)
    rng = random.Random(config.train_seed)
    eos = tok.eos_token_id
    model = make_model(config, len(tok), eos)
    token_lists, weight_lists = object_weights(tok, corpus, objects, config.object_weight)
    blocks_per_epoch = len(pack_epoch(token_lists, weight_lists, eos, config.n_positions, random.Random(0))[0])
    steps_per_epoch = math.ceil(blocks_per_epoch / config.batch_size)
    horizon = steps_per_epoch * config.schedule_epochs
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.98),
                            weight_decay=config.weight_decay)
    sample = random.Random(config.train_seed).sample(records, min(config.check_sample, len(records)))
    final_set = records if config.final_check_records <= 0 else records[: config.final_check_records]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.train_dtype == "bfloat16")
    history, step, start = [], 0, time.time()
    scores, final = {}, None
    for epoch in range(config.max_epochs):
        data, weights = pack_epoch(token_lists, weight_lists, eos, config.n_positions, rng)
        model.train()
        bar = progress(range(0, len(data), config.batch_size), desc=f"epoch {epoch + 1}", enabled=show_progress,
                       leave=False)
        total_loss = 0.0
        for i in bar:
            for group in opt.param_groups:
                group["lr"] = lr_at(step, horizon, config)
            batch = data[i : i + config.batch_size]
            with autocast:
                logits = model(input_ids=batch).logits
            loss = weighted_lm_loss(logits.float(), batch, weights[i : i + config.batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            total_loss += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        with autocast:  # the per-epoch sample only decides when to run the full (float32) check
            scores = knowledge(model, tok, sample)
        history.append({"epoch": epoch + 1, "loss": total_loss / len(bar), **scores,
                        "elapsed_s": round(time.time() - start, 1)})
        if show_progress:
            note(f"epoch {epoch + 1}: loss {history[-1]['loss']:.3f} sample knowledge "
                       + " ".join(f"{k} {v:.3f}" for k, v in scores.items()))
        if passes(scores, config.target_knowledge + config.check_margin) or epoch + 1 == config.max_epochs:
            final = knowledge(model, tok, final_set)
            if show_progress:
                note("full check: " + " ".join(f"{k} {v:.3f}" for k, v in final.items()))
            if passes(final, config.target_knowledge):
                break
    model.eval()
    if config.require_knowledge and not passes(final, config.target_knowledge):
        raise RuntimeError(f"model did not reach {config.target_knowledge:.0%} knowledge in "
                           f"{config.max_epochs} epochs: {final}")
    report = {"final": final, "final_records": len(final_set), "epochs": len(history), "steps": step,
              "train_s": round(time.time() - start, 1), "history": history}
    return model, report
