"""Related papers for a paper page: papers of the same family first, then the nearest titles.

Nearness is the idf-weighted overlap of title words (aliases count as title words). The search over
the whole catalogue goes through an inverted index that skips words found in many titles, so it
stays linear at 10,000 entries; within a family every member is scored.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from ..catalog import Entry

__all__ = ["Related", "RelatedIndex"]

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "a an and are as at by for from in into is it of on or over the to via with without towards toward "
    "using based large model models vision language visual multimodal lvlm lvlms mllm mllms vlm vlms".split()
)
# A word in more titles than this says little about a paper and would make the search quadratic.
_MAX_POSTINGS = 200


@dataclass(frozen=True)
class Related:
    family: list[Entry]  # same placement, nearest title first
    elsewhere: list[Entry]  # other placements, nearest title first


def _words(entry: Entry) -> set[str]:
    text = " ".join([str(entry.data["title"]), *map(str, entry.data.get("aliases") or [])]).lower()
    return {word for word in _WORD.findall(text) if len(word) > 2 and word not in _STOP}


class RelatedIndex:
    def __init__(self, entries: list[Entry]):
        self.entries = entries
        self.keys = {id(entry): entry.key for entry in entries}
        self.words = {entry.key: _words(entry) for entry in entries}
        df = Counter(word for words in self.words.values() for word in words)
        total = max(len(entries), 1)
        self.idf = {word: math.log((1 + total) / (1 + count)) + 1.0 for word, count in df.items()}
        self.postings: dict[str, list[Entry]] = defaultdict(list)
        self.placed: dict[str, list[Entry]] = defaultdict(list)
        for entry in entries:
            for word in self.words[entry.key]:
                if df[word] <= _MAX_POSTINGS:
                    self.postings[word].append(entry)
            for node_id in entry.data["placement"]:
                self.placed[node_id].append(entry)

    def _score(self, words: set[str], other: Entry) -> float:
        return sum(self.idf[word] for word in words & self.words[self.keys[id(other)]])

    def _order(self, scored: dict[int, tuple[float, Entry]], limit: int) -> list[Entry]:
        # Highest score, then newest, then key: a stable order for equal scores.
        ranked = sorted(scored.values(), key=lambda item: (-item[0], -item[1].data["year"], self.keys[id(item[1])]))
        return [entry for _, entry in ranked[:limit]]

    def related(self, entry: Entry, family_limit: int = 5, other_limit: int = 3) -> Related:
        # Entries are compared by identity: Entry.key reads the data each time, and this runs for
        # every pair of a family (most of a build's time at 10,000 entries otherwise).
        words = self.words[entry.key]
        family: dict[int, tuple[float, Entry]] = {id(entry): (0.0, entry)}
        for node_id in entry.data["placement"]:
            for other in self.placed[node_id]:
                if id(other) not in family:
                    family[id(other)] = (self._score(words, other), other)
        del family[id(entry)]
        scores: dict[int, float] = defaultdict(float)
        found: dict[int, Entry] = {}
        for word in words:
            for other in self.postings.get(word, ()):
                if other is not entry and id(other) not in family:
                    scores[id(other)] += self.idf[word]
                    found[id(other)] = other
        elsewhere = {key: (score, found[key]) for key, score in scores.items()}
        return Related(self._order(family, family_limit), self._order(elsewhere, other_limit))
