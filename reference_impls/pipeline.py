"""Apply a registered inference-time method to a local checkpoint: ``pipeline(...)``, ``python -m reference_impls run``.

Loads a checkpoint directory and its processor with ``AutoModelForImageTextToText`` /
``AutoProcessor`` (``local_files_only=True``: nothing is downloaded), builds the prompt with the
processor's chat template (one image, one question), and greedy-decodes twice: unmodified, then
with the method. Each run reports the answer, prefill and decode wall time, the KV-cache bytes
resident after decoding and the visual tokens kept. Methods reach the model through the
architecture adapters (:mod:`reference_impls.common.architectures`), so a method that cannot run
on the checkpoint's architecture refuses with the reason instead of answering wrongly.

Examples:
    >>> import tempfile
    >>> from PIL import Image
    >>> folder = save_tiny_checkpoint(tempfile.mkdtemp())
    >>> report = pipeline(folder, "snapkv", budget=0.2, image=Image.new("RGB", (32, 24)), question="what is it?",
    ...                   max_new_tokens=4)
    >>> report["method"].resident_kv_bytes < report["unmodified"].resident_kv_bytes
    True

Deviations / guesses: batch 1, greedy, no stop at end-of-sequence for the timing runs beyond what
the checkpoint's generation config says; a processor without a chat template gets the image
placeholder followed by the question.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from reference_impls.common.architectures import adapter_for
from reference_impls.decoding.cache import KVCacheMethod, tensor_bytes
from reference_impls.registry import get_method

__all__ = ["RunReport", "format_report", "load_local", "make_method", "pipeline", "save_tiny_checkpoint"]

_WITH_KINDS = ("kv-cache", "visual-token")
_WITH_NAMES = ("vcd", "pai")
_CALLED_NAMES = ("speculative",)


@dataclass
class RunReport:
    """One greedy decode of one prompt."""

    answer: str
    tokens: list[int]
    prefill_seconds: float
    """From the ``generate`` call to the first new token (vision tower included)."""
    decode_seconds: float
    """From the first new token to the last."""
    resident_kv_bytes: int | None
    """Bytes of every tensor the KV cache keeps after decoding (None: the method keeps no cache we can read)."""
    visual_in: int
    visual_kept: int


def load_local(model_dir: str | Path):
    """``(model, processor)`` from a local directory (no network access; eval mode)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True).eval()
    return model, processor


def make_method(name: str, budget: float | None = None, **options: Any):
    """The registered method ``name`` configured with ``budget`` (where it has one) and ``options``."""
    spec = get_method(name)
    if spec.kind not in _WITH_KINDS and name not in _WITH_NAMES + _CALLED_NAMES:
        raise ValueError(
            f"{name!r} (kind {spec.kind}) is not an inference-time method the pipeline can apply; "
            f"use a kv-cache or visual-token method, or one of {_WITH_NAMES + _CALLED_NAMES}"
        )
    fields = {f.name for f in dataclasses.fields(spec.target)}
    if budget is not None:
        if "budget" not in fields:
            raise ValueError(f"{name!r} has no budget; pass its own options instead ({sorted(fields)})")
        options["budget"] = budget
    return spec.target(**options)


def _inputs(processor, image, question: str) -> dict[str, torch.Tensor]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    if getattr(processor, "chat_template", None):
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
    else:
        text = f"{processor.image_token}{question}"
    return dict(processor(text=[text], images=[image], return_tensors="pt"))


class _Clock:
    """A ``generate`` streamer that only records when tokens arrive."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        self.times.append(time.perf_counter())


@torch.no_grad()
def _run(model, processor, inputs: dict, method, max_new_tokens: int) -> RunReport:
    adapter = adapter_for(model)
    n_visual = int(adapter.visual_mask(inputs["input_ids"], model.config).sum())
    prompt_length = inputs["input_ids"].shape[1]
    from reference_impls.decoding.speculative import SpeculativeDecoding

    if isinstance(method, SpeculativeDecoding):  # its own decoding loop, no ``with``
        result = method(model, inputs, max_new_tokens=max_new_tokens)
        stats = result.stats
        answer = processor.decode(result.tokens, skip_special_tokens=True)
        return RunReport(
            answer,
            list(result.tokens),
            stats["prefill_seconds"],
            stats["decode_seconds"],
            None,
            stats["visual_in"],
            stats["visual_kept"],
        )
    clock = _Clock()
    kwargs = dict(inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=clock)
    cache = None
    if not isinstance(method, KVCacheMethod):  # a KV method installs its own cache
        cache = kwargs["cache"] = DynamicCache(config=model.config.get_text_config())
    start = time.perf_counter()
    with method(model) if method is not None else contextlib.nullcontext():
        output = model.generate(**kwargs)
    end = time.perf_counter()
    first = clock.times[1] if len(clock.times) > 1 else end
    if isinstance(method, KVCacheMethod):
        kv_bytes = method.stats["resident_bytes"]
    else:
        kv_bytes = sum(tensor_bytes((layer.keys, layer.values)) for layer in cache.layers)
    stats = getattr(method, "stats", None) or {}
    tokens = output[0, prompt_length:].tolist()
    return RunReport(
        answer=processor.decode(tokens, skip_special_tokens=True),
        tokens=tokens,
        prefill_seconds=first - start,
        decode_seconds=end - first,
        resident_kv_bytes=kv_bytes,
        visual_in=int(stats.get("visual_in", n_visual)),
        visual_kept=int(stats.get("visual_kept", n_visual)),
    )


def pipeline(
    model,
    method: str | Any | None = None,
    *,
    image,
    question: str,
    budget: float | None = None,
    processor=None,
    max_new_tokens: int = 16,
    options: dict | None = None,
) -> dict[str, RunReport]:
    """Answer ``question`` about ``image`` unmodified and with ``method``; ``{"unmodified", "method"}`` reports.

    Args:
        model: a local checkpoint directory, or a loaded model (then pass ``processor``).
        method: a registered method name (configured with ``budget`` and ``options``), a method
            object, or ``None`` (only the unmodified run).
        image: a PIL image (or anything the processor accepts).
    """
    if isinstance(model, (str, Path)):
        model, processor = load_local(model)
    if processor is None:
        raise ValueError("pass the processor along with a loaded model")
    adapter_for(model)  # refuses unsupported architectures before any work
    if isinstance(method, str):
        method = make_method(method, budget, **(options or {}))
    inputs = _inputs(processor, image, question)
    reports = {"unmodified": _run(model, processor, inputs, None, max_new_tokens)}
    if method is not None:
        reports["method"] = _run(model, processor, inputs, method, max_new_tokens)
    return reports


def format_report(reports: dict[str, RunReport], method_label: str = "method") -> str:
    """A small text table, unmodified against method."""
    names = [("unmodified", "unmodified")] + ([("method", method_label)] if "method" in reports else [])
    rows = [
        ("answer", lambda r: repr(r.answer)),
        ("prefill (s)", lambda r: f"{r.prefill_seconds:.4f}"),
        ("decode (s)", lambda r: f"{r.decode_seconds:.4f} ({len(r.tokens)} tokens)"),
        ("resident KV (bytes)", lambda r: "n/a" if r.resident_kv_bytes is None else f"{r.resident_kv_bytes:,}"),
        ("visual tokens kept", lambda r: f"{r.visual_kept}/{r.visual_in}"),
    ]
    width = max(len(label) for label, _ in rows) + 2
    lines = [" " * width + "".join(f"{label:<28}" for _, label in names)]
    for label, cell in rows:
        lines.append(f"{label:<{width}}" + "".join(f"{cell(reports[key]):<28}" for key, _ in names))
    return "\n".join(lines)


def save_tiny_checkpoint(directory: str | Path, seed: int = 0) -> Path:
    """Save a tiny random LLaVA-1.5-architecture checkpoint and a processor built in code (no downloads).

    For trying the pipeline and the ``run`` command: a character-level tokenizer with a chat
    template, a CLIP image processor (16 x 16 pixels, 16 image tokens) and the matrix's tiny LLaVA.
    """
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
    )
    from transformers import (
        CLIPImageProcessorPil,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    from reference_impls.common.architectures.zoo import tiny_vlm

    model, _ = tiny_vlm("llava", seed=seed)
    specials = ["<s>", "</s>", "<pad>", "<unk>", "<image>"]  # ids 0-4 as in the tiny config (image = 4)
    words = specials[:4] + specials[4:] + list("abcdefghijklmnopqrstuvwxyz0123456789 .,?!':")
    words += [f"w{i}" for i in range(model.config.get_text_config().vocab_size - len(words))]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one character, one token
    tokenizer.decoder = decoders.Fuse()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    template = (
        "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %} answer:{% endif %}"
    )
    vision = model.config.vision_config
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": vision.image_size},
            crop_size={"height": vision.image_size, "width": vision.image_size},
        ),
        tokenizer=fast,
        chat_template=template,
        patch_size=vision.patch_size,
        image_token="<image>",
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
    )
    directory = Path(directory)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
