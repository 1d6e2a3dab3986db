"""Training-vs-scored-task contamination: do a source's training rows hold the documents a scored task tests?

A model trained on a task's test documents scores memorisation, not skill (`data=real eval=paper` would train on
MathQA test rows and then score lm-eval's `mathqa`, the same split). So before any training, every source's rows
are compared with every scored task's documents, as the GPT-3 paper (Brown et al. 2020, appendix C) and lm-eval's
decontamination tooling do:

* text is normalised as lm-eval's `Janitor` does (lm_eval/decontamination/janitor.py): ASCII letters lowercased,
  `string.punctuation` deleted, split on whitespace (so runs of whitespace count as one);
* exact: a document whose whole normalised text equals a training row's;
* 13-gram: a document sharing at least one word 13-gram with any of the source's rows is "dirty" (GPT-3's and
  lm-eval's rule: one collision is enough). Documents shorter than 13 words can only be found by the exact test.

Every count is reported (`overlap`); the run is refused (`check`) only where a source holds a document itself:
an exact match, or at least half of the document's words inside 13-grams the source holds (`contained`). One
shared 13-gram alone also fires on incidental overlap — measured on the real data: a FLAN CoT row quoting the
Wikipedia sentence a BoolQ passage holds, a CoT row and a BBH item ending in the same "Options: (A) 1 … (E) 5"
list — and those are reported, not refused.

A document's text is what the model is scored on for its correct answer, built by lm-eval's own task objects:
`doc_to_text(doc)` + the task's `target_delimiter` + the gold answer (the gold choice of a multiple-choice task,
`doc_to_target` of a generation task). Only the documents scored are read: the first `eval.limit` of each task.

Template text is not content: a 13-gram found in TEMPLATE_DOCS or more documents of one task is
that task's template (truthfulqa_mc1's six-question preamble, a BBH subtask's shared instructions, MMLU's
"True, True / False, False" answer lists), not a document's content, and is not counted for that task.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.data import mirror as hub
from harness.data.sources import Distribution
from harness.errors import HarnessError
from harness.evaluation.helm import is_multiple_choice
from harness.evaluation.runner import builtin_spec, leaf_tasks, load_task
from harness.evaluation.tasks import BUILTIN_TASKS, limit_for, resolve_tasks, stock_manager

NGRAM = 13  # GPT-3's and lm-eval's window, in words
TEMPLATE_DOCS = 3  # a 13-gram in this many documents of one task is template text, not content (see module doc)
CONTAINED = 0.5  # a document is held by a source when this share of its content words lie in shared 13-grams
# lm-eval's Janitor: ASCII upper case → lower case, punctuation deleted; nothing else changes
_TABLE = str.maketrans(string.ascii_lowercase + string.ascii_uppercase, string.ascii_lowercase * 2,
                       string.punctuation)


class ContaminationError(HarnessError, ValueError):
    """A training source holds a scored task's test documents; one line, exit code 2."""


# ---------------------------------------------------------------- text

def words(text: str) -> list[str]:
    """The normalised words of a text, as lm-eval's Janitor splits them."""
    return text.translate(_TABLE).split()


def ngrams(tokens: Sequence[str], n: int = NGRAM) -> list[int]:
    """The hash of the word n-gram starting at each position (Python's tuple hash: 64 bits, stable within a
    process, which is all a comparison made in one process needs); empty when there are fewer than n words."""
    return list(map(hash, zip(*(tokens[i:] for i in range(n)), strict=False)))


# ---------------------------------------------------------------- task documents

def task_documents(tasks: Sequence[str], *, task_dir: Path | None = None, mirror: str | Path | None = None,
                   limit: int | float | Mapping[str, int | None] | None = None,
                   builtin: Iterable[str] = BUILTIN_TASKS) -> dict[str, list[str]]:
    """{leaf task: the text of each document it scores}, for `eval.tasks` (groups and tags expanded to their leaf
    tasks, the names lm-eval reports them under).

    Tasks are built by lm-eval exactly as `evaluation.evaluate` builds them: built-in ones from the YAML that
    `write_tasks` put in `task_dir`, stock ones from lm-eval's index with their datasets read through the hub
    mirror. `limit` is lm-eval's: an int keeps the first N documents of each task, a float < 1 that fraction
    (rounded up); a mapping {listed task: limit} gives each listed task its own (`eval.limit`).
    """
    from lm_eval.evaluator_utils import get_sample_size
    from lm_eval.tasks import TaskManager

    selection = resolve_tasks(tasks, builtin)
    specs: list[Any] = [builtin_spec(task_dir, t) for t in selection.builtin] + list(selection.stock)
    manager = stock_manager() if selection.stock else TaskManager(include_defaults=False)
    docs = {}
    with hub.hub_mirror(mirror):
        for top, spec in zip([*selection.builtin, *selection.stock], specs, strict=True):
            loaded = load_task(manager, spec)  # builds the task(s): reads datasets
            for name, task in leaf_tasks(loaded).items():
                every = task.eval_docs
                n = get_sample_size(task, limit_for(limit, top))
                scored = every if n is None else [every[i] for i in range(min(n, len(every)))]
                docs[name] = [doc_text(task, doc) for doc in scored]
    return docs


def doc_text(task: Any, doc: Any) -> str:
    """What the model is scored on for the correct answer: prompt + target delimiter + gold answer."""
    text, target = task.doc_to_text(doc), task.doc_to_target(doc)
    delimiter = task.config.target_delimiter
    if isinstance(target, list):  # several correct answers: the first stands for them
        target = target[0] if target else ""
    if is_multiple_choice(task):
        choices = task.doc_to_choice(doc)
        if getattr(task, "multiple_input", 0):  # winogrande: choices are contexts, doc_to_text the gold index
            return f"{choices[text]}{delimiter}{target}"
        if isinstance(target, int) and 0 <= target < len(choices):
            target = choices[target]
    return f"{text}{delimiter}{target}"


def training_texts(distributions: Mapping[str, Distribution]) -> dict[str, list[str]]:
    """{source: the text of each training row} (prompt + response, as trained on). Validation rows are not
    trained on, so they are left out."""
    return {name: [ex.text for ex in d.train] for name, d in distributions.items()}


# ---------------------------------------------------------------- overlap

@dataclass(frozen=True)
class _TaskGrams:
    """One task's documents, prepared once for every source: normalised texts, the hash of the n-gram at each word
    position, and each document's content n-grams (its own less the task's template ones)."""

    texts: list[str]
    positions: list[list[int]]
    content: list[set[int]]
    template: set[int]


def overlap(train: Mapping[str, Sequence[str]], docs: Mapping[str, Sequence[str]],
            n: int = NGRAM) -> dict[str, dict[str, dict[str, Any]]]:
    """{source: {task: counts}} for every (source, task) pair. Counts:

    docs       the task's documents compared (the scored ones)
    exact      documents whose normalised text equals one of the source's rows
    ngram      documents sharing at least one n-gram (template n-grams excepted) with the source's rows
    dirty      exact or ngram: GPT-3's and lm-eval's "dirty" document (one collision is enough)
    contained  exact, or at least CONTAINED of the document's content words (words in no template n-gram) lie
               in n-grams the source holds: the source holds the document, not just a phrase it shares with it
    fraction   contained / docs
    short      documents with fewer than n words (or only template n-grams): only the exact test can find them
    examples   indices of the first few dirty documents, in the task's document order, to look at

    Each source's n-grams are hashed once into one set and each task's documents once, then every document is
    looked up: the cost is linear in the text read.
    """
    tasks = {task: _prepare(texts, n) for task, texts in docs.items()}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for source, rows in train.items():
        grams: set[int] = set()
        whole: set[str] = set()
        for row in rows:
            tokens = words(row)
            whole.add(" ".join(tokens))
            grams.update(ngrams(tokens, n))
        out[source] = {task: _compare(t, whole, grams, n) for task, t in tasks.items()}
    return out


def _prepare(texts: Sequence[str], n: int) -> _TaskGrams:
    tokens = [words(t) for t in texts]
    positions = [ngrams(t, n) for t in tokens]
    seen = Counter(g for doc in positions for g in set(doc))
    template = {g for g, c in seen.items() if c >= TEMPLATE_DOCS}
    return _TaskGrams([" ".join(t) for t in tokens], positions, [set(p) - template for p in positions], template)


def _compare(task: _TaskGrams, whole: set[str], grams: set[int], n: int) -> dict[str, Any]:
    exact = [t in whole for t in task.texts]
    ngram = [not g.isdisjoint(grams) for g in task.content]
    dirty = [i for i, (e, g) in enumerate(zip(exact, ngram, strict=True)) if e or g]
    contained = [i for i in dirty if exact[i] or _covered(task.positions[i], task.template, grams, n) >= CONTAINED]
    return {"docs": len(task.texts), "exact": sum(exact), "ngram": sum(ngram), "dirty": len(dirty),
            "contained": len(contained), "fraction": len(contained) / len(task.texts) if task.texts else 0.0,
            "short": sum(not g for g in task.content), "examples": dirty[:5]}


def _covered(positions: Sequence[int], template: set[int], grams: set[int], n: int) -> float:
    """Share of a document's content words (those in no template n-gram) inside an n-gram the source holds."""
    boiler: set[int] = set()
    found: set[int] = set()
    for start, g in enumerate(positions):
        if g in template:
            boiler.update(range(start, start + n))
        elif g in grams:
            found.update(range(start, start + n))
    content = len(positions) + n - 1 - len(boiler)
    return len(found - boiler) / content if content > 0 else 0.0


# ---------------------------------------------------------------- decision

Overlap = Mapping[str, Mapping[str, Mapping[str, Any]]]  # what `overlap` returns: {source: {task: counts}}


def contaminated(result: Overlap, exempt: Iterable[str] = ()) -> list[tuple[str, str]]:
    """(source, task) pairs where the source holds at least one of the task's scored documents (`contained` > 0),
    tasks in `exempt` left out. A shared 13-gram alone (`dirty`) is not enough: see the module docstring."""
    skip = set(exempt)
    return [(source, task) for source, per_task in result.items() for task, c in per_task.items()
            if c["contained"] and task not in skip]


def check(result: Overlap, allow: bool = False, exempt: Iterable[str] = ()) -> list[tuple[str, str]]:
    """The contaminated pairs; raise ContaminationError naming them unless `allow` (eval.allow_contamination)."""
    pairs = contaminated(result, exempt)
    if pairs and not allow:
        listed = "; ".join(f"{s} holds {result[s][t]['contained']} of {t}'s {result[s][t]['docs']} test documents"
                           for s, t in pairs[:3])
        more = f" (and {len(pairs) - 3} more pairs)" if len(pairs) > 3 else ""
        raise ContaminationError(f"training data holds scored test documents: {listed}{more}. Train on other rows, "
                                 "drop those tasks from eval.tasks, or set eval.allow_contamination=true to run "
                                 "anyway with their scores flagged")
    return pairs


def affected(pairs: Iterable[tuple[str, str]], results: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """{reported task or group: the sources holding its documents}, for flagging scores: a group is affected when
    any of its leaves is. `results` is `evaluation.evaluate`'s (each entry's `subtasks`)."""
    by_leaf: dict[str, set[str]] = {}
    for source, task in pairs:
        by_leaf.setdefault(task, set()).add(source)

    def leaves(name: str) -> list[str]:
        children = results.get(name, {}).get("subtasks") or []
        return [leaf for c in children for leaf in leaves(c)] if children else [name]

    out = {name: sorted(set().union(*(by_leaf.get(leaf, set()) for leaf in leaves(name)))) for name in results}
    return {name: sources for name, sources in out.items() if sources}
