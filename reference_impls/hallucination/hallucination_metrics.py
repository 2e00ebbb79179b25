"""Object-hallucination metrics: CHAIR on captions, POPE on yes/no object probes, object F1.

CHAIR (Rohrbach et al., EMNLP 2018) counts object mentions in generated captions that are not
in the image's ground truth: ``CHAIR_i`` per mention, ``CHAIR_s`` per caption. POPE (Li et al.,
EMNLP 2023) asks "is there a <object> in the image?" for present and absent objects and scores
the yes/no answers as a binary classifier (F1 is the headline number). A model that mentions
fewer objects lowers CHAIR trivially, so :func:`chair` always reports object recall and the
number of mentions next to it, and :func:`object_f1` scores caption quality against the ground
truth.

The functions take already extracted object mentions (lists of canonical object names), so they
work for any caption format; :func:`extract_objects` maps caption words to canonical names with
an optional synonym table, as CHAIR does for COCO.

Examples:
    >>> chair([["cat", "dog"], ["cat"]], [{"cat"}, {"cat"}])["chair_i"]
    0.3333333333333333
    >>> pope([True, False, True], [True, False, False])["f1"]
    0.6666666666666666
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Iterable, Mapping, Sequence

__all__ = ["extract_objects", "chair", "pope", "pope_questions", "object_f1", "mention_rate"]


def extract_objects(words: Iterable[str], objects: Iterable[str], synonyms: Mapping[str, str] | None = None) -> list[str]:
    """Canonical object names mentioned in ``words``, in order, each at most once.

    Args:
        words: the caption split into words.
        objects: the canonical object vocabulary.
        synonyms: optional map from a surface word to its canonical object name.

    Returns:
        The distinct canonical objects mentioned, in order of first mention.
    """
    vocabulary, synonyms = set(objects), dict(synonyms or {})
    found: list[str] = []
    for word in words:
        name = synonyms.get(word, word)
        if name in vocabulary and name not in found:
            found.append(name)
    return found


def chair(mentions: Sequence[Sequence[str]], truths: Sequence[set[str] | frozenset[str]]) -> dict[str, float]:
    """CHAIR_s, CHAIR_i, object recall and mentions per caption.

    Args:
        mentions: per caption, the distinct objects it mentions.
        truths: per caption, the objects present in its image.

    Returns:
        ``chair_s`` (captions with >= 1 hallucinated object / captions), ``chair_i``
        (hallucinated mentions / all mentions; 0 when nothing is mentioned), ``recall``
        (mentioned present objects / present objects) and ``mentions`` (mean per caption).
    """
    if len(mentions) != len(truths):
        raise ValueError("one ground-truth set per caption")
    hallucinated = total = bad_captions = hits = present = 0
    for said, truth in zip(mentions, truths):
        said = set(said)
        wrong = len(said - set(truth))
        hallucinated += wrong
        total += len(said)
        bad_captions += wrong > 0
        hits += len(said & set(truth))
        present += len(truth)
    n = max(len(mentions), 1)
    return {
        "chair_s": bad_captions / n,
        "chair_i": hallucinated / total if total else 0.0,
        "recall": hits / present if present else 0.0,
        "mentions": total / n,
    }


def object_f1(mentions: Sequence[Sequence[str]], truths: Sequence[set[str] | frozenset[str]]) -> dict[str, float]:
    """Micro-averaged object precision, recall and F1 of captions against the ground truth."""
    true_pos = said_total = truth_total = 0
    for said, truth in zip(mentions, truths):
        true_pos += len(set(said) & set(truth))
        said_total += len(set(said))
        truth_total += len(truth)
    precision = true_pos / said_total if said_total else 0.0
    recall = true_pos / truth_total if truth_total else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def mention_rate(mentions: Sequence[Sequence[str]], target: str) -> float:
    """Fraction of captions that mention ``target`` (the targeted hallucination rate on scenes without it)."""
    return sum(target in said for said in mentions) / max(len(mentions), 1)


def pope(answers: Sequence[bool], labels: Sequence[bool]) -> dict[str, float]:
    """POPE scores of yes/no answers (``True`` = "yes") against the truth (``True`` = present).

    Returns:
        ``accuracy``, ``precision``, ``recall``, ``f1`` (with "yes" as the positive class) and
        ``yes_ratio``.
    """
    if len(answers) != len(labels):
        raise ValueError("one label per answer")
    tp = sum(a and y for a, y in zip(answers, labels))
    fp = sum(a and not y for a, y in zip(answers, labels))
    fn = sum((not a) and y for a, y in zip(answers, labels))
    n = max(len(answers), 1)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "accuracy": sum(bool(a) == bool(y) for a, y in zip(answers, labels)) / n,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": sum(bool(a) for a in answers) / n,
    }


def pope_questions(
    truths: Sequence[set[str] | frozenset[str]],
    objects: Sequence[str],
    *,
    per_image: int = 3,
    mode: str = "random",
    seed: int = 0,
) -> list[tuple[int, str, bool]]:
    """POPE probes: for each image up to ``per_image`` present and ``per_image`` absent objects.

    Args:
        truths: per image, the objects present.
        objects: the object vocabulary to draw absent objects from.
        per_image: questions of each polarity per image.
        mode: how absent objects are chosen: ``"random"``, ``"popular"`` (most frequent objects
            over ``truths``) or ``"adversarial"`` (most often co-occurring with the image's objects).
        seed: sampling seed.

    Returns:
        ``(image_index, object, present)`` triples.
    """
    rng = random.Random(seed)
    frequency = Counter(name for truth in truths for name in truth)
    together: Counter[tuple[str, str]] = Counter()
    if mode == "adversarial":
        for truth in truths:
            together.update((a, b) for a in truth for b in truth if a != b)
    questions: list[tuple[int, str, bool]] = []
    for index, truth in enumerate(truths):
        present = sorted(truth)
        rng.shuffle(present)
        absent = [name for name in objects if name not in truth]
        if mode == "random":
            rng.shuffle(absent)
        elif mode == "popular":
            absent.sort(key=lambda name: (-frequency[name], name))
        elif mode == "adversarial":
            absent.sort(key=lambda name: (-sum(together[(t, name)] for t in truth), name))
        else:
            raise ValueError(f"unknown POPE mode {mode!r}")
        questions += [(index, name, True) for name in present[:per_image]]
        questions += [(index, name, False) for name in absent[:per_image]]
    return questions
