"""Distil a twig draft from the captioner or ToyVLM (CPU, about a minute each).

``python -m reference_impls.decoding.train_twig --target captioner`` grows a twig on the
hallucination benchmark's captioner (:mod:`reference_impls.hallucination.captioner`, the
ToyVLM architecture with 3 layers; multi-word captions), ``--target toyvlm`` on ToyVLM (4
layers, one-word answers), trains it with :func:`~reference_impls.decoding.twig_draft.distill_twig`
on the target's own greedy outputs for fresh prompts, and saves it under
``reference_impls/decoding/checkpoints/twig-<target>/`` with a manifest (command, seed, steps,
wall time, held-out agreement of the twig, of the untrained twig and of the early-exit drafts).

Data seeds: training prompts come from seed 21 (captioner scenes) / 2 (ToyVLM samples); the
held-out agreement uses seed 22 / 1, the seeds the benchmark ``speculative_distilled`` decodes.
Neither overlaps the targets' own training data (seed 0).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from reference_impls.common.results import command_line
from reference_impls.decoding.twig_draft import DistillConfig, distill_twig, grow_twig, save_twig, twig_agreement

__all__ = ["CHECKPOINTS", "SETTINGS", "load_prompts", "main"]

CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"
SETTINGS = {
    # target: (shared layers, twig layers, training seed, held-out seed, fractions of visual tokens trained on)
    "captioner": (1, 1, 21, 22, (1.0,)),
    "toyvlm": (2, 1, 2, 1, (1.0, 0.25)),
}


def load_prompts(target: str, n: int, seed: int):
    """``(model, prompts, words)``: the target model and ``n`` batch-1 prompts drawn with ``seed``."""
    if target == "captioner":
        from reference_impls.hallucination.captioner import CAPTION_PROMPT, encode
        from reference_impls.hallucination.train_captioner import load_captioner

        model, vocab, world, _ = load_captioner()
        prompts = [encode([scene], [CAPTION_PROMPT], None, vocab, model.config) for scene in world.scenes(n, seed)]
        return model, prompts, vocab.words
    from reference_impls.common.toyvlm import load_toyvlm

    toy = load_toyvlm()
    return toy.model, [toy.collate([sample]) for sample in toy.samples(n, seed=seed)], toy.vocab.words


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=sorted(SETTINGS), default="captioner")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("-n", type=int, default=1000, help="training prompts")
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    shared, twig_layers, train_seed, held_seed, keeps = SETTINGS[args.target]
    model, prompts, _ = load_prompts(args.target, args.n, train_seed)
    _, held_out, _ = load_prompts(args.target, args.held_out, held_seed)
    config = DistillConfig(steps=args.steps, visual_keeps=keeps, seed=args.seed)
    draft = grow_twig(model, shared, twig_layers)
    baselines = {f"early exit {shared} layers": grow_twig(model, shared, 0), "untrained twig": draft}
    before = {keep: {name: twig_agreement(model, d, held_out, keep) for name, d in baselines.items()} for keep in keeps}
    start = time.perf_counter()
    log = distill_twig(model, draft, prompts, config)
    seconds = time.perf_counter() - start
    agreement = {}
    for keep in keeps:
        agreement[f"visual {keep:.0%}"] = before[keep] | {"twig": twig_agreement(model, draft, held_out, keep)}
        for name, scores in agreement[f"visual {keep:.0%}"].items():
            print(
                f"held-out, draft sees {keep:.0%} of visual tokens, {name}: "
                + ", ".join(f"{k} {v:.1f}%" for k, v in scores.items())
            )
    manifest = {
        "command": command_line("reference_impls.decoding.train_twig", argv),
        "target": args.target,
        "seed": args.seed,
        "steps": args.steps,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "temperature": config.temperature,
        "visual_keeps": list(keeps),
        "train_prompts": args.n,
        "train_data_seed": train_seed,
        "held_out_prompts": args.held_out,
        "held_out_seed": held_seed,
        "train_seconds": round(seconds, 1),
        "twig_parameters": sum(p.numel() for name, p in draft.named_parameters() if not _shared(name, shared)),
        "target_parameters": sum(p.numel() for p in model.parameters()),
        "held_out_agreement": {
            k: {name: {m: round(v, 1) for m, v in s.items()} for name, s in d.items()} for k, d in agreement.items()
        },
        "agreement_note": "teacher-forced top-1 agreement with the target on its greedy outputs, percent: tokens = every generated position, first = the first token, decode = the later ones (the ones a draft proposes)",
        "log": log,
    }
    path = save_twig(draft, args.out or CHECKPOINTS / f"twig-{args.target}", manifest)
    print(f"trained in {seconds:.1f}s; wrote {path}")
    return manifest


def _shared(name: str, shared_layers: int) -> bool:
    if name.startswith(("lm_head.", "model.language_model.norm.")):
        return False
    if name.startswith("model.language_model.layers."):
        return int(name.split(".")[3]) < shared_layers
    return True


if __name__ == "__main__":
    main()
