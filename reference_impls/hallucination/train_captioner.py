"""Train the biased captioner of the hallucination benchmark (CPU, a few minutes).

``python -m reference_impls.hallucination.train_captioner`` trains a small
Qwen2.5-VL-architecture model (ToyVLM's vocabulary, config builder and patch layout, see
:mod:`reference_impls.common.toyvlm`) on annotator-biased captions and yes/no probes of
co-occurrence scenes (:class:`~reference_impls.hallucination.captioner.CaptionWorld`), saves it
to ``reference_impls/hallucination/checkpoints/captioner/`` with a manifest, and prints the
held-out hallucination rate and clean-caption quality.

Deviations / guesses: one 84 px image (9 visual tokens) per scene keeps a training step cheap;
OneCycle AdamW and the step count are chosen to fit the CPU budget, not tuned.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from transformers import Qwen2_5_VLForConditionalGeneration

from reference_impls.common.results import command_line
from reference_impls.common.toyvlm import Vocab, build_vocab

from .captioner import CaptionWorld, captioner_config, evaluate_captioner, make_eval_set, retain_batch
from .unlearning_losses import mean_nll

__all__ = ["CHECKPOINT", "train_captioner", "load_captioner"]

CHECKPOINT = Path(__file__).resolve().parent / "checkpoints" / "captioner"


def train_captioner(
    world: CaptionWorld,
    steps: int = 1500,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    pool: int = 6000,
    log_every: int = 100,
):
    """Train from scratch; returns ``(model, vocab, log)``."""
    torch.manual_seed(seed)
    vocab = build_vocab()
    model = Qwen2_5_VLForConditionalGeneration(captioner_config(vocab))
    scenes = world.scenes(pool, seed=seed)
    rng = np.random.default_rng(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    log, start = [], time.time()
    for step in range(steps):
        index = rng.choice(len(scenes), size=batch_size, replace=False)
        batch = retain_batch(world, [scenes[i] for i in index], vocab, model.config, rng)
        inputs = {k: v for k, v in batch.items() if k not in ("labels", "mask")}
        loss = mean_nll(model(**inputs, use_cache=False).logits, batch["labels"], batch["mask"])
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % log_every == 0 or step == steps - 1:
            log.append({"step": step, "loss": float(loss), "seconds": time.time() - start})
            print(f"step {step:5d} loss {float(loss):.4f} {time.time() - start:6.1f}s", flush=True)
    model.eval()
    return model, vocab, log


def load_captioner(path: Path | None = None):
    """``(model, vocab, world, manifest)`` from a saved captioner checkpoint."""
    path = Path(path or CHECKPOINT)
    manifest = json.loads((path / "manifest.json").read_text())
    vocab = Vocab(tuple(json.loads((path / "vocab.json").read_text())))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(path, attn_implementation="sdpa").eval()
    model.generation_config.pad_token_id = vocab.pad
    model.generation_config.eos_token_id = vocab.eos
    world = manifest["world"]
    world["shapes"] = tuple(world["shapes"])
    return model, vocab, CaptionWorld(**world), manifest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    world = CaptionWorld()
    start = time.time()
    model, vocab, log = train_captioner(world, steps=args.steps)
    seconds = time.time() - start
    scores = evaluate_captioner(model, vocab, world, make_eval_set(world))
    print(json.dumps(scores, indent=1))
    model.generation_config.pad_token_id = vocab.pad
    model.generation_config.eos_token_id = vocab.eos
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    (args.out / "vocab.json").write_text(json.dumps(list(vocab.words)) + "\n")
    manifest = {
        "command": command_line("reference_impls.hallucination.train_captioner", argv),
        "world": asdict(world),
        "steps": args.steps,
        "train_seconds": round(seconds, 1),
        "parameters": sum(p.numel() for p in model.parameters()),
        "eval": scores,
        "log": log,
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")


if __name__ == "__main__":
    main()
