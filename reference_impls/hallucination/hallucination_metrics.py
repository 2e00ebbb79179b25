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
an optional synonym table and plural folding, as CHAIR does for COCO.

Paper: arXiv 1809.02156 (CHAIR); arXiv 2305.10355 (POPE).
Upstream: LisaAnne/Hallucination utils/chair.py @ 585f2d9c01ce19bd466de28d9236678df8450813 (CHAIR);
POPE: RUCAIBox/POPE evaluate.py (not in our code index; we read the same rule in its copy
DAMO-NLP-SG/VCD experiments/eval/eval_pope.py @ 039af55ecd68005ea767b8579a5766f038a780ad).

Examples:
    >>> chair([["cat", "dog"], ["cat"]], [{"cat"}, {"cat"}])["chair_i"]
    0.3333333333333333
    >>> chair([["square", "square", "square"], ["circle"]], [set(), {"circle"}])["chair_i"]  # every mention counts
    0.75
    >>> extract_objects("two dogs and a dog".split(), ["dog"])
    ['dog', 'dog']
    >>> pope([True, False, True], [True, False, False])["f1"]
    0.6666666666666666

Deviations:

- CHAIR on nothing: when no caption mentions an object, upstream divides by zero
  (``ZeroDivisionError``); :func:`chair` returns ``chair_i = 0`` (and ``chair_s`` of no
  captions is 0), so a model that stays silent can be scored. POPE with no "yes" answer (or no
  present object) likewise gives precision (recall, F1) 0 instead of an error.
- Plurals: upstream singularises every word with ``pattern.en.singularize``; we fold the
  regular English plural endings (``-s``, ``-es``, ``-ies``) onto a vocabulary word, which
  covers regular nouns; irregular plurals ("mice") go in ``synonyms``. ToyVLM captions have no
  plurals, so the rule never fires there.
- COCO-specific rules of upstream (two-word objects such as "hot dog", "baby X" -> X, "toilet
  seat" is not a chair) are not built in: they belong to a COCO synonym table, not to the metric.
- ``distinct=True`` (off by default) counts each object once per caption: our earlier rule,
  kept because it is the right one for per-caption object sets (:func:`object_f1` uses sets).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

__all__ = ["extract_objects", "chair", "pope", "pope_questions", "object_f1", "mention_rate"]


def _singular(word: str, known: set[str]) -> str:
    """``word`` or the vocabulary word its regular plural ending folds onto."""
    if word in known:
        return word
    for suffix, replacement in (("ies", "y"), ("es", ""), ("s", "")):
        if word.endswith(suffix) and word[: -len(suffix)] + replacement in known:
            return word[: -len(suffix)] + replacement
    return word


def extract_objects(
    words: Iterable[str],
    objects: Iterable[str],
    synonyms: Mapping[str, str] | None = None,
    *,
    distinct: bool = False,
) -> list[str]:
    """Canonical object names mentioned in ``words``, in order: every mention, as CHAIR counts them.

    Args:
        words: the caption split into words.
        objects: the canonical object vocabulary.
        synonyms: optional map from a surface word to its canonical object name.
        distinct: keep only the first mention of each object.

    Returns:
        The canonical objects mentioned, in order (plurals folded onto the singular).
    """
    vocabulary, synonyms = set(objects), dict(synonyms or {})
    known = vocabulary | set(synonyms)
    found: list[str] = []
    for word in words:
        word = _singular(word, known)
        name = synonyms.get(word, word)
        if name in vocabulary and not (distinct and name in found):
            found.append(name)
    return found


def chair(
    mentions: Sequence[Sequence[str]],
    truths: Sequence[set[str] | frozenset[str]],
    *,
    distinct: bool = False,
) -> dict[str, float]:
    """CHAIR_s, CHAIR_i, object recall and mentions per caption.

    Args:
        mentions: per caption, the objects it mentions, one entry per mention
            (:func:`extract_objects`).
        truths: per caption, the objects present in its image.
        distinct: count each object once per caption (not upstream's rule; see Deviations).

    Returns:
        ``chair_s`` (captions with >= 1 hallucinated mention / captions), ``chair_i``
        (hallucinated mentions / all mentions, repeats included; 0 when nothing is mentioned),
        ``recall`` (distinct mentioned present objects / present objects) and ``mentions``
        (mean mentions per caption).
    """
    if len(mentions) != len(truths):
        raise ValueError("one ground-truth set per caption")
    hallucinated = total = bad_captions = hits = present = 0
    for said, truth in zip(mentions, truths):
        truth = set(truth)
        counted = list(dict.fromkeys(said)) if distinct else list(said)
        wrong = sum(name not in truth for name in counted)
        hallucinated += wrong
        total += len(counted)
        bad_captions += wrong > 0
        hits += len(set(said) & truth)
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
