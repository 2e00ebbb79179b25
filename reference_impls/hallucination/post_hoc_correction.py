"""Post-hoc correction by self-verification: ask the model about each object it named, drop denials.

Idea: a caption is generated as usual; then every object it mentions is checked with a yes/no
question to the same model about the same image ("is there a <object> ?"), and the objects the
model denies are removed from the caption (with their connecting words). The model is not
changed; only its output is edited. This works only as far as the model's answers are more
grounded than its captions.

Paper: arXiv 2310.16045 (Woodpecker) is the closest listed paper: it extracts the mentioned
objects, verifies them with *external* detectors and VQA models, and rewrites the caption with
an LLM. We keep the extract-verify-remove skeleton but verify with the captioner itself.
Upstream: none followed (Woodpecker's pipeline depends on external detectors, a VQA model and an
LLM rewriter; ours replaces all three, so there is no code to match).

Examples:
    >>> remove_objects("circle and square and cross".split(), {"square"}, {"circle", "square", "cross"})
    ['circle', 'and', 'cross']
    >>> method = SelfCheckCorrection()
    >>> method.correct([["circle", "and", "square"]], ["circle", "square"], ask=lambda i, names: [n != "square" for n in names])
    [['circle']]

Deviations / guesses: objects are removed, never replaced; an emptied caption becomes
``empty`` ("nothing" in the ToyVLM world). On the biased ToyVLM captioner the yes/no probes
carry the same annotator bias as the captions (the base model answers "yes" to "is there a
square ?" on almost every circle-without-square scene), so this method cannot remove the
targeted hallucination there. Measured on ToyVLM: it did not help at all. The targeted rate
stayed at 91% and CHAIR was unchanged, because the model confirmed every object it had named.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from reference_impls.registry import register

from .captioner import CaptionScene, answer_yes, generate_captions
from .hallucination_metrics import extract_objects

__all__ = ["SelfCheckCorrection", "remove_objects"]


def remove_objects(
    words: Sequence[str],
    denied: Iterable[str],
    objects: Iterable[str],
    connectors: Sequence[str] = ("and",),
    empty: str | None = "nothing",
) -> list[str]:
    """``words`` without the ``denied`` objects and without connectors left dangling.

    Args:
        words: the caption split into words.
        denied: object names to remove.
        objects: the object vocabulary (other object words are kept).
        connectors: words joining objects; a connector survives only between two kept words.
        empty: the caption to return when nothing is left (None: an empty list).

    Returns:
        The corrected caption words.
    """
    denied, objects = set(denied), set(objects)
    kept = [w for w in words if not (w in objects and w in denied)]
    out: list[str] = []
    for word in kept:
        if word in connectors and (not out or out[-1] in connectors):
            continue
        out.append(word)
    while out and out[-1] in connectors:
        out.pop()
    if not any(w in objects for w in out) and any(w in objects for w in words):
        return [empty] if empty is not None else []
    return out


@register("self-check-correction", family="post-hoc-correction", kind="hallucination")
@dataclass
class SelfCheckCorrection:
    """Generate, verify every mentioned object with the model's own yes/no answer, remove denials."""

    connectors: tuple[str, ...] = ("and",)
    empty: str | None = "nothing"

    def correct(
        self, captions: Sequence[Sequence[str]], objects: Sequence[str], ask: Callable[[int, list[str]], list[bool]]
    ) -> list[list[str]]:
        """Corrected captions; ``ask(i, names)`` answers, for caption ``i``, whether each object is present.

        Returns:
            One corrected word list per caption.
        """
        out = []
        for i, words in enumerate(captions):
            named = extract_objects(words, objects, distinct=True)
            answers = ask(i, named) if named else []
            denied = {name for name, yes in zip(named, answers) if not yes}
            out.append(remove_objects(words, denied, objects, self.connectors, self.empty) if denied else list(words))
        return out

    def captioner(self, objects: Sequence[str]) -> Callable:
        """A ``(model, scenes, vocab) -> captions`` function: greedy captions, then self-verification."""

        def caption(model, scenes: Sequence[CaptionScene], vocab) -> list[list[str]]:
            captions = generate_captions(model, scenes, vocab)
            pairs = [
                (i, name) for i, words in enumerate(captions) for name in extract_objects(words, objects, distinct=True)
            ]
            answers = answer_yes(model, [scenes[i] for i, _ in pairs], [name for _, name in pairs], vocab)
            lookup = dict(zip(pairs, answers))
            return self.correct(captions, objects, lambda i, names: [lookup[(i, n)] for n in names])

        return caption
