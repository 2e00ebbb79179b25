"""Related papers for a paper page: papers of the same family first, then the nearest titles.

Nearness is the idf-weighted overlap of title words (aliases count as title words). The search over
the whole catalogue goes through an inverted index that skips words found in many titles, so it
stays linear at 10,000 entries; within a family every member is scored.
"""

from __future__ import annotations

import heapq
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
        # Entries are handled by position: Entry.key reads the data on every call, and the family
        # scoring below runs for every pair of a family (200 x 10,000 pairs at scale).
        ordered = sorted(range(len(entries)), key=lambda i: (-entries[i].data["year"], entries[i].key))
        self.rank = [0] * len(entries)  # newest first, then by key: the order of equal scores
        for position, index in enumerate(ordered):
            self.rank[index] = position
        self.position = {id(entry): index for index, entry in enumerate(entries)}
        self.words = [_words(entry) for entry in entries]
        df = Counter(word for words in self.words for word in words)
        total = max(len(entries), 1)
        # Integer weights (micro-units of idf): sums of integers do not depend on the order of the
        # words (set order changes between processes), so equal scores stay equal and ties keep
        # their order from one build to the next.
        self.idf = {word: round((math.log((1 + total) / (1 + count)) + 1.0) * 1e6) for word, count in df.items()}
        self.postings: dict[str, list[int]] = defaultdict(list)
        self.placed: dict[str, list[int]] = defaultdict(list)
        for index, entry in enumerate(entries):
            for word in self.words[index]:
                if df[word] <= _MAX_POSTINGS:
                    self.postings[word].append(index)
            for node_id in entry.data["placement"]:
                self.placed[node_id].append(index)

    def related(self, entry: Entry, family_limit: int = 5, other_limit: int = 3) -> Related:
        me = self.position[id(entry)]
        words, idf, rank = self.words[me], self.idf, self.rank
        members = {index for node_id in entry.data["placement"] for index in self.placed[node_id]} - {me}
        # (score, -rank, index): the largest are the nearest titles, newest first among equals.
        family = heapq.nlargest(
            family_limit,
            [(sum(idf[word] for word in words & self.words[index]), -rank[index], index) for index in members],
        )
        scores: dict[int, int] = defaultdict(int)
        for word in words:
            for index in self.postings.get(word, ()):
                if index != me and index not in members:
                    scores[index] += idf[word]
        elsewhere = heapq.nlargest(other_limit, [(score, -rank[index], index) for index, score in scores.items()])
        return Related([self.entries[item[2]] for item in family], [self.entries[item[2]] for item in elsewhere])
