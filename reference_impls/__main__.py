"""``python -m reference_impls``: apply a method to a local checkpoint.

Commands::

    python -m reference_impls run --model LOCAL_DIR --method snapkv --budget 0.2 --image a.png --question "..."
    python -m reference_impls save-tiny DIR     # a tiny random checkpoint + processor, built in code
    python -m reference_impls methods           # the methods ``run`` accepts
"""

from __future__ import annotations

import argparse
import ast
import sys


def _option(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference_impls", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="answer a question about an image, unmodified and with a method")
    run.add_argument("--model", required=True, help="local checkpoint directory (config, weights, processor)")
    run.add_argument("--method", default=None, help="registered method name (none: only the unmodified run)")
    run.add_argument("--budget", type=float, default=None, help="the method's budget (fraction kept)")
    run.add_argument("--option", action="append", default=[], metavar="NAME=VALUE", help="another method field")
    run.add_argument("--image", required=True)
    run.add_argument("--question", required=True)
    run.add_argument("--max-new-tokens", type=int, default=16)
    run.add_argument("--threads", type=int, default=None)
    tiny = sub.add_parser("save-tiny", help="save a tiny random LLaVA checkpoint with a processor built in code")
    tiny.add_argument("directory")
    sub.add_parser("methods", help="list the methods run accepts")
    args = parser.parse_args(argv)

    from reference_impls import pipeline as pipe

    if args.command == "save-tiny":
        print(f"saved {pipe.save_tiny_checkpoint(args.directory)}")
        return 0
    if args.command == "methods":
        from reference_impls.registry import all_methods

        for spec in all_methods():
            if spec.kind in pipe._WITH_KINDS or spec.name in pipe._WITH_NAMES + pipe._CALLED_NAMES:
                print(f"{spec.name:20s} {spec.kind}")
        return 0
    import torch
    from PIL import Image

    from reference_impls.common.architectures import UnsupportedFeature

    if args.threads:
        torch.set_num_threads(args.threads)
    image = Image.open(args.image).convert("RGB")
    try:
        reports = pipe.pipeline(
            args.model,
            args.method,
            image=image,
            question=args.question,
            budget=args.budget,
            max_new_tokens=args.max_new_tokens,
            options=dict(map(_option, args.option)),
        )
    except UnsupportedFeature as error:
        print(f"refused: {error}", file=sys.stderr)
        return 2
    except ValueError as error:  # a configuration the method rejects (budget range, layer index)
        print(f"error: {error}", file=sys.stderr)
        return 2
    label = args.method if args.budget is None else f"{args.method} (budget {args.budget})"
    print(pipe.format_report(reports, label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
