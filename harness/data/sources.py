"""Training-data sources: where a distribution's train/val rows come from, and how a row becomes an Example.

`data.sources.<name>` names a format and a path; a distribution without an entry is `builtin` (the seeded
generators of harness/data/builtin.py). Real data is read only through `datasets.load_dataset`, called as a module
attribute so that `harness.data.mirror.hub_mirror` can redirect hub ids, and so caching, streaming and
`HF_DATASETS_OFFLINE` behave as users of `datasets` know them.

    path                           read as
    owner/name (a hub id)          load_dataset(path, name, split=…, revision=…, streaming=…)
    file.jsonl / .json             load_dataset("json", data_files=file)   (JSON lines, a JSON array, or one object)
    file.parquet / .csv            load_dataset("parquet" | "csv", data_files=file)
    file.tsv                       load_dataset("csv", delimiter="\\t", quoting=QUOTE_NONE): quotes are text;
                                   headerless when `columns` is set or the format names its columns (flan_cot)
    folder/                        every file above in it, one load each, rows concatenated in name order

Rows become (prompt, response) pairs through a registered format (FORMATS); the loss is on the response.
Train and validation rows are drawn by a seeded permutation (validation first, so its rows do not move when
n_train changes); a validation text never also appears in train. A distribution's fingerprint is a sha256 of
the formatted rows it actually uses, so editing a used row changes it and editing an unused row does not.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import itertools
import json
import logging
import os
import string
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.config import SourceConfig
from harness.data import filecheck
from harness.data.builtin import GENERATORS, Example, generate_splits, stable_seed
from harness.data.filecheck import DataFileError, check_structure, layout_of
from harness.errors import HarnessError

log = logging.getLogger(__name__)

EXTENSIONS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv"}
CHUNK = 1024  # rows fetched from Arrow per select(): far faster than one __getitem__ per row


class SourceError(HarnessError, ValueError):
    """Bad training data or source config; one line naming the source, file, row and field where they apply."""


@dataclass(frozen=True)
class Distribution:
    """A distribution's training and validation examples, ready for tokenising.

    `test` holds built-in eval items only; a real dataset's evaluation is a stock lm-eval task. `fingerprint`
    belongs in every cache key that depends on the rows; `info` says what was read (rows available and used,
    path, format, template) for the run's summary.
    """

    name: str
    train: list[Example]
    val: list[Example]  # the selection slice: what the arms' searches and grids select on
    test: list[Example]
    fingerprint: str  # of train + val: what training runs and selections depend on
    info: dict[str, Any]
    report: list[Example] = field(default_factory=list)  # the report slice: held out, never seen by a selection
    report_fingerprint: str = ""


class MissingField(KeyError):
    """A row lacks a field its format needs (absent, null or blank); the loader adds where it was."""


def text_field(row: dict[str, Any], key: str) -> str:
    """The row's `key` as a non-blank string (CSV numbers come back as numbers: they are str()-ed)."""
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()) or isinstance(value, (list, dict)):
        raise MissingField(key)
    return value if isinstance(value, str) else str(value)


# ----------------------------------------------------------------------------------------------- formats


def format_mathqa(row: dict[str, Any], source: SourceConfig) -> tuple[str, str]:
    """MathQA (Amini et al. 2019) record → the built-in mathqa generator's layout, so both read alike.

    prompt:   "Problem: {Problem}\\nOptions: {options}\\n"
    response: "Rationale: {Rationale}\\nAnswer: {correct}"
    The response is the rationale and the answer letter. `options` is the record's own string
    ("a ) 38 , b ) 27.675 , …"; a list is joined with " , "); the quotes MathQA wraps every Rationale in are
    dropped. Template chosen here: neither the DEM paper nor MathQA states one for fine-tuning.
    """
    options = row.get("options")
    if isinstance(options, list) and options:
        row = {**row, "options": " , ".join(map(str, options))}
    rationale = text_field(row, "Rationale").strip()
    if len(rationale) >= 2 and rationale[0] == rationale[-1] == '"':
        rationale = rationale[1:-1].strip()
    prompt = f"Problem: {text_field(row, 'Problem').strip()}\nOptions: {text_field(row, 'options').strip()}\n"
    return prompt, f"Rationale: {rationale}\nAnswer: {text_field(row, 'correct').strip()}"


def _tk_end(text: str) -> str:
    """Tk-Instruct ends every field with '.' unless it already ends in punctuation."""
    text = text.strip()
    return text if text and text[-1] in string.punctuation else text + "."


def _first_target(row: dict[str, Any]) -> str:
    targets = row.get("targets")
    if isinstance(targets, list):
        targets = next((t for t in targets if isinstance(t, str) and t.strip()), None)
    return text_field({"targets": targets}, "targets")


def format_sni(row: dict[str, Any], source: SourceConfig) -> tuple[str, str]:
    """Super-NaturalInstructions instance → Tk-Instruct's encoding (Wang et al. 2022, `src/ni_collator.py`).

    prompt:   "Definition: {definition}\\n\\n"
              + per positive example k (the first `n_positive_examples` of the task's `Positive Examples`):
                " Positive Example {k} -\\nInput: {input}\\n Output: {output}\\n\\n"
              + "Now complete the following example -\\nInput: {input}\\nOutput:"
    response: " {output[0]}"  — the instance's first reference output
    Each field ends with '.' unless it ends in punctuation, as in Tk-Instruct; its default training encoding
    is the definition plus two positive examples. Differences: the first output, not a random one (determinism);
    the space Tk-Instruct leaves after "Output:" starts the response instead (same text, cleaner tokens); no
    truncation to a token budget (packing splits long examples). The hub's flattened rows
    (`Muennighoff/natural-instructions`: definition, inputs, targets) carry no demonstrations, so they are
    zero-shot: "Definition: …\\n\\nNow complete the following example -\\nInput: …\\nOutput:".
    """
    prompt = f"Definition: {_tk_end(text_field(row, 'definition'))}\n\n"
    for k, example in enumerate((row.get("positive_examples") or [])[: source.n_positive_examples], 1):
        try:
            demo_in, demo_out = text_field(example or {}, "input"), text_field(example or {}, "output")
        except MissingField as err:
            raise MissingField(f"Positive Examples[{k - 1}].{err.args[0]}") from None
        prompt += f" Positive Example {k} -\nInput: {_tk_end(demo_in)}\n Output: {_tk_end(demo_out)}\n\n"
    prompt += f"Now complete the following example -\nInput: {_tk_end(text_field(row, 'inputs'))}\nOutput:"
    return prompt, " " + _first_target(row).strip()


def _unescape(text: str) -> str:
    """FLAN stores a newline inside a TSV field as the two characters `\\n` (its `simple_cot_tsv` undoes it)."""
    return text.replace("\\n", "\n")


def format_flan_cot(row: dict[str, Any], source: SourceConfig) -> tuple[str, str]:
    """FLAN v2 Chain-of-Thought record (question, answer, rationale) → a zero-shot CoT prompt.

    prompt:   "Q: {question}\\nA: Let's think step by step."
    response: " {rationale} So the answer is {answer}."
    The response is the rationale then the answer. The answer sentence is one of FLAN v2's own CoT targets
    ("{chain_of_thought} So the answer is {answer}.", flan/v2/templates.py); the cue is Kojima et al. (2022).
    FLAN samples one of ~10 templates per dataset; one fixed template is chosen here so runs are deterministic
    and match the built-in cot generator. Literal `\\n` in question and rationale become newlines (as FLAN's
    loader does); the answer keeps its text.
    """
    question = _unescape(text_field(row, "question")).strip()
    rationale = _unescape(text_field(row, "rationale")).strip()
    answer = text_field(row, "answer").strip()
    end = "" if answer[-1] in ".!?" else "."
    return f"Q: {question}\nA: Let's think step by step.", f" {rationale} So the answer is {answer}{end}"


def format_text(row: dict[str, Any], source: SourceConfig) -> tuple[str, str]:
    """Any dataset with a prompt column and a response column, used as they are.

    prompt:   row[prompt_field]
    response: response_prefix + row[response_field]   (response_prefix " " by default)
    The response is the response column. Use it for data that is already templated (e.g. FLAN's inputs/targets).
    """
    return text_field(row, source.prompt_field), source.response_prefix + text_field(row, source.response_field)


def _sni_required(columns: Sequence[str], source: SourceConfig) -> tuple[str, ...]:
    """Task-file rows need Definition + Instances; the hub's flattened rows need definition, inputs, targets."""
    return ("Definition", "Instances") if "Instances" in columns else ("definition", "inputs", "targets")


@dataclass(frozen=True)
class Format:
    """A registered data format: how a row becomes (prompt, response), and which fields it reads."""

    name: str
    format_row: Callable[[dict[str, Any], SourceConfig], tuple[str, str]] | None  # None: builtin generators
    required: Callable[[Sequence[str], SourceConfig], tuple[str, ...]]  # the dataset columns it cannot do without
    optional: tuple[str, ...] = ()  # columns it reads when present
    headerless_columns: tuple[str, ...] | None = None  # .tsv files of this format have no header: these columns
    template: str = ""  # prompt ||| response, for the run's summary (the formatter's docstring has the details)
    version: int = 1  # bump when the template changes: it is part of the fingerprint


FORMATS: dict[str, Format] = {
    "builtin": Format("builtin", None, lambda cols, s: (), template="harness/data/builtin.py generators"),
    "mathqa": Format("mathqa", format_mathqa, lambda cols, s: ("Problem", "options", "Rationale", "correct"),
                     template="Problem: {Problem}\nOptions: {options}\n ||| Rationale: {Rationale}\nAnswer: {correct}"),
    "sni": Format("sni", format_sni, _sni_required, optional=("positive_examples",),
                  template="Definition: {definition}\n\n[ Positive Example {k} -\nInput: {input}\n Output: {output}"
                           "\n\n]*n_positive_examples Now complete the following example -\nInput: {input}\nOutput:"
                           " ||| {output[0]}"),
    "flan_cot": Format("flan_cot", format_flan_cot, lambda cols, s: ("question", "answer", "rationale"),
                       headerless_columns=("question", "answer", "rationale"),
                       template="Q: {question}\nA: Let's think step by step. ||| {rationale} So the answer is "
                                "{answer}."),
    "text": Format("text", format_text, lambda cols, s: (s.prompt_field, s.response_field),
                   template="{prompt_field} ||| {response_prefix}{response_field}"),
}


def get_format(fmt: str) -> Format:
    """The registered format `fmt`, or a SourceError with a suggestion and the full list."""
    if fmt in FORMATS:
        return FORMATS[fmt]
    close = difflib.get_close_matches(fmt, FORMATS, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise SourceError(f"unknown format '{fmt}'.{hint} Available: {', '.join(FORMATS)}")


# ----------------------------------------------------------------------------------------------- reading


@dataclass
class Part:
    """Rows read by one load_dataset call (one file, or one hub split), and how to name them in errors."""

    label: str
    rows: Any  # datasets.Dataset or datasets.IterableDataset
    tasks: int | None = 0  # > 0: rows are SNI instances expanded from this many task objects (None: streamed)


def is_local(path: str) -> bool:
    """A local file or folder (hub ids never end in a data file extension nor start with . / ~)."""
    p = Path(path).expanduser()
    return p.exists() or path.startswith((".", "/", "~")) or p.suffix.lower() in EXTENSIONS


def local_files(path: str) -> list[Path]:
    """The data files a local path stands for; SourceError when missing, empty or of an unknown kind."""
    p = Path(path).expanduser()
    if not p.exists():
        raise SourceError(f"{p}: no such file or folder")
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in EXTENSIONS)
        if not files:
            raise SourceError(f"{p}: folder holds no {'/'.join(EXTENSIONS)} files")
    elif p.suffix.lower() not in EXTENSIONS:
        raise SourceError(f"{p}: unsupported file type '{p.suffix}'; use one of {', '.join(EXTENSIONS)}")
    else:
        files = [p]
    for f in files:
        if f.stat().st_size == 0:
            raise SourceError(f"{f}: file is empty")
    return files


def _one_line(err: BaseException) -> str:
    """datasets wraps parser errors (DatasetGenerationError from pandas' "Expected 3 fields in line 7…")."""
    cause = err.__cause__ or err.__context__
    text = str(cause if cause is not None and str(cause).strip() else err).strip() or type(err).__name__
    return " ".join(text.split())


def _call_load(label: str, *args: Any, **kwargs: Any) -> Any:
    """datasets.load_dataset(*args, **kwargs), with any failure turned into a one-line SourceError."""
    import datasets
    from datasets.exceptions import DatasetsError

    try:
        return datasets.load_dataset(*args, **kwargs)
    except (OSError, ValueError, DatasetsError, StopIteration) as err:
        raise SourceError(f"{label}: cannot read: {_one_line(err)}") from None


def read_file(file: Path, fmt: Format, source: SourceConfig, streaming: bool) -> Any:
    """One local file through datasets' packaged builder for its extension."""
    import datasets

    builder = EXTENSIONS[file.suffix.lower()]
    kwargs: dict[str, Any] = {}
    if builder == "csv":
        kwargs = {"keep_default_na": False, "na_filter": False}  # "None", "NA" are answers, not missing values
        if file.suffix.lower() == ".tsv":
            kwargs |= {"delimiter": "\t", "quoting": csv.QUOTE_NONE}  # FLAN's TSVs: quotes are part of the text
        columns = source.columns or (fmt.headerless_columns if file.suffix.lower() == ".tsv" else None)
        if columns:
            kwargs |= {"header": None, "column_names": list(columns),
                       "features": datasets.Features({c: datasets.Value("string") for c in columns})}
    try:  # every line with the exact layout first: pandas would take a 4th column as an index, or pad a short row
        check_structure(file, layout_of(file, source.columns or (fmt.headerless_columns if tsv(file) else None)))
    except DataFileError as err:
        raise SourceError(str(err)) from None
    return _call_load(str(file), builder, data_files=str(file), split="train", streaming=streaming, **kwargs)


def tsv(file: Path) -> bool:
    return file.suffix.lower() == ".tsv"


def hub_label(path: str, config: str | None, split: str) -> str:
    return path + (f" ({config})" if config else "") + f" [{split}]"


def read_hub(source: SourceConfig, config: str | None, split: str) -> Any:
    """One split of one config of a hub dataset (or of its copy in a hub mirror)."""
    kwargs: dict[str, Any] = {"split": split, "streaming": source.streaming}
    if source.revision:
        kwargs["revision"] = source.revision
    if source.data_files:
        kwargs["data_files"] = list(source.data_files)
    return _call_load(hub_label(str(source.path), config, split), source.path, config, **kwargs)


SNI_INSTANCE_COLUMNS = ("definition", "positive_examples", "inputs", "targets", "task_row", "instance")
TASK_FILE_NAMES = {"definition": "Definition", "inputs": "input", "targets": "output"}  # for error messages


def _expand_tasks(batch: dict[str, list], indices: list[int]) -> dict[str, list]:
    """SNI task objects (Definition, Positive Examples, Instances[{id, input, output[]}]) → one row per instance."""
    out: dict[str, list] = {k: [] for k in SNI_INSTANCE_COLUMNS}
    positives = batch["Positive Examples"] if "Positive Examples" in batch else [None] * len(indices)
    for t, definition, pos, instances in zip(indices, batch["Definition"], positives, batch["Instances"],
                                             strict=True):
        if isinstance(definition, list):  # official files hold a list (Tk-Instruct reads Definition[0]) or a str
            definition = definition[0] if definition else None
        demos = [{"input": p.get("input"), "output": _first(p.get("output"))} for p in pos or [] if p]
        for k, inst in enumerate(instances or []):
            inst = inst or {}
            output = inst.get("output")
            out["definition"].append(definition)
            out["positive_examples"].append(demos)
            out["inputs"].append(inst.get("input"))
            out["targets"].append(output if isinstance(output, list) else None if output is None else [output])
            out["task_row"].append(t)
            out["instance"].append(k)
    return out


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) and value else value


def expand_sni_tasks(rows: Any) -> Any:
    """Task-object rows → instance rows with one schema, through datasets' own map (cached, or lazy when streamed)."""
    import datasets

    string_ = datasets.Value("string")
    features = datasets.Features({
        "definition": string_, "positive_examples": datasets.List({"input": string_, "output": string_}),
        "inputs": string_, "targets": datasets.List(string_), "task_row": datasets.Value("int64"),
        "instance": datasets.Value("int64"),
    })
    return rows.map(_expand_tasks, batched=True, with_indices=True, remove_columns=_columns(rows),
                    features=features)


def _columns(rows: Any) -> list[str]:
    cols = rows.column_names
    if cols is None:  # a stream whose features are not known before the first row
        cols = list(next(iter(rows.take(1)), {}).keys())
    return list(cols)


def prepare(part: Part, fmt: Format, source: SourceConfig) -> Part:
    """Rename columns, check the format's fields exist, expand SNI task objects, keep only the columns it reads."""
    rows = part.rows
    if source.fields:
        present = _columns(rows)
        rename = {col: f for f, col in source.fields.items() if col in present and col != f}
        rows = rows.rename_columns(rename) if rename else rows
    columns = _columns(rows)
    missing = [f for f in fmt.required(columns, source) if f not in columns]
    if missing:  # the columns it does have, so a renamed hub copy can be mapped with `fields`
        raise SourceError(f"{part.label}: row 1: missing field '{missing[0]}' (format {fmt.name} needs "
                          f"{', '.join(fmt.required(columns, source))}; the data has {', '.join(columns)})")
    if fmt.name == "sni" and "Instances" in columns:
        return Part(part.label, expand_sni_tasks(rows), tasks=None if streamed(rows) else len(rows))
    keep = [c for c in columns if c in (*fmt.required(columns, source), *fmt.optional)]
    return Part(part.label, rows.select_columns(keep))


def open_parts(source: SourceConfig, fmt: Format, split: str) -> list[Part]:
    """The source's rows for one split, as prepared parts (one per local file, or per hub config)."""
    if source.path is None:
        raise SourceError(f"format {fmt.name} needs a path (a hub id, a local file or a folder)")
    if is_local(source.path):  # local files are read whole (streaming buys nothing there)
        parts = [Part(str(f), read_file(f, fmt, source, streaming=False)) for f in local_files(source.path)]
    else:
        configs = source.configs or [source.name]
        parts = [Part(hub_label(source.path, c, split), read_hub(source, c, split)) for c in configs]
    return [prepare(p, fmt, source) for p in parts]


# ----------------------------------------------------------------------------------------------- sampling


def streamed(rows: Any) -> bool:
    import datasets

    return isinstance(rows, datasets.IterableDataset)


def missing_field(part: Part, row: dict[str, Any], index: int | None, name: str) -> str:
    """'<where>: missing field <name>', naming the field as the file spells it."""
    if part.tasks != 0:
        name = TASK_FILE_NAMES.get(name, name)
    return f"{where(part, row, index)}: missing field '{name}'"


def where(part: Part, row: dict[str, Any], index: int | None) -> str:
    """'file: row 7' (1-based), or 'task.json: Instances[3]' for SNI task objects; index None = streamed."""
    if part.tasks != 0:  # name the task object only where a file holds several (or may: a stream)
        several = (part.tasks is None and row["task_row"] > 0) or (part.tasks or 0) > 1
        task = f"row {row['task_row'] + 1}: " if several else ""
        return f"{part.label}: {task}Instances[{row['instance']}]"
    return f"{part.label}: row {index + 1}" if index is not None else f"{part.label}: a streamed row"


def iter_rows(parts: list[Part], seed: int, buffer: int) -> Iterator[tuple[dict[str, Any], Part, int | None]]:
    """Every row once, in a seeded random order, with where it came from.

    Arrow (downloaded or local) sources: a numpy permutation over all parts; it depends only on the row counts
    and the seed, so editing a row never moves the others. Streams: datasets' buffered shuffle, part by part
    (so a streamed source of several configs draws its validation rows from the first: stream one config).
    """
    if streamed(parts[0].rows):
        for part in parts:
            for row in part.rows.shuffle(seed=seed % 2**32, buffer_size=buffer):
                yield row, part, None
        return
    starts = np.cumsum([0] + [len(p.rows) for p in parts])
    order = np.random.default_rng(seed).permutation(int(starts[-1]))
    for lo in range(0, len(order), CHUNK):  # fetch a chunk per part with select(): one Arrow read, not CHUNK
        chunk = order[lo:lo + CHUNK]
        owner = np.searchsorted(starts, chunk, side="right") - 1
        fetched = {}
        for p in np.unique(owner).tolist():
            local = chunk[owner == p] - starts[p]
            fetched[p] = zip(local.tolist(), parts[p].rows.select(local), strict=True)
        for p in owner.tolist():
            index, row = next(fetched[p])
            yield row, parts[p], index


def draw(rows: Iterator[tuple[dict[str, Any], Part, int | None]], n: int, fmt: Format, source: SourceConfig, name: str,
         exclude: set[str], dedupe: bool) -> tuple[list[Example], int]:
    """Up to n examples from `rows`; texts in `exclude` are skipped (and within the draw too when `dedupe`).

    Returns the examples and how many duplicate rows were skipped. A row missing a field is a SourceError.
    """
    out: list[Example] = []
    seen: set[str] = set()
    skipped = 0
    while len(out) < n:
        try:
            row, part, index = next(rows)
        except StopIteration:
            break
        assert fmt.format_row is not None
        try:
            prompt, response = fmt.format_row(row, source)
        except MissingField as err:
            raise SourceError(f"data.sources.{name}: {missing_field(part, row, index, err.args[0])}") from None
        text = prompt + response
        if text in exclude or (dedupe and text in seen):
            skipped += 1
            continue
        seen.add(text)
        out.append(Example(prompt, response))
    return out, skipped


def carve_sizes(available: int | None, n_train: int, n_val: int, n_report: int = 0) -> tuple[int, int, int]:
    """Train/val/report sizes when all come from one split. Short of rows, the held-out slices keep their sizes
    unless that leaves train fewer rows than they hold together: then they get half, shared in proportion."""
    held = n_val + n_report
    if available is None or available >= n_train + held:
        return n_train, n_val, n_report
    if available - held >= held:
        return available - held, n_val, n_report
    half = available // 2
    report = n_report * half // held if held else 0
    return available - half, half - report, report


def fingerprint(fmt: Format, train: list[Example], val: list[Example]) -> str:
    """sha256 of the format (and its template version) and of every (prompt, response) used, in order."""
    h = hashlib.sha256(json.dumps([fmt.name, fmt.version]).encode())
    for split, examples in (("train", train), ("val", val)):
        for ex in examples:
            h.update(json.dumps([split, ex.prompt, ex.response]).encode())
    return h.hexdigest()


def _count(parts: list[Part]) -> int | None:
    if streamed(parts[0].rows):
        return None
    return sum(len(p.rows) for p in parts)


def load_builtin(name: str, source: SourceConfig, *, seed: int, n_train: int, n_val: int,
                 n_test: int, n_report: int = 0) -> Distribution:
    """The seeded generator of harness/data/builtin.py, unchanged (the embedded default's numbers are pinned)."""
    generator = source.name or name
    if generator not in GENERATORS:
        raise SourceError(f"data.sources.{name}: no built-in generator '{generator}'; available: "
                          f"{', '.join(sorted(GENERATORS))} (or give the distribution a source with a path)")
    s = generate_splits(generator, seed, n_train, n_val, n_test, n_report)
    fmt = FORMATS["builtin"]
    info = {"format": "builtin", "generator": generator, "rows_available": None, "train": len(s.train),
            "val": len(s.val), "report": len(s.report), "test": len(s.test),
            "template": f"harness.data.builtin.{GENERATORS[generator].__name__}"}
    return Distribution(name, s.train, s.val, s.test, fingerprint(fmt, s.train, s.val), info, s.report,
                        fingerprint(fmt, [], s.report))


def load_distribution(name: str, source: SourceConfig, *, seed: int, n_train: int, n_val: int,
                      n_test: int, n_report: int | None = None) -> Distribution:
    """Read, split and format one distribution's rows; SourceError (one line) on any bad input.

    n_train/n_val/n_report are data.n_train/n_val/n_report; the source's own values win when set, and an unset
    n_report is the distribution's n_val. Validation is
    two disjoint slices: `val`, the selection slice the arms select on, and `report`, drawn after train and val
    (so adding it changes neither) and used only for reported perplexities. Real formats return test=[] (their
    evaluation is a stock lm-eval task). When a source has fewer rows than asked, all of them are used (see
    carve_sizes) and info["short"] says so; fewer than two rows is an error.
    """
    n_train, n_val = source.n_train or n_train, source.n_val or n_val
    n_report = source.n_report or (n_val if n_report is None else n_report)  # None: as many as val; 0: none
    try:
        fmt = get_format(source.format)
    except SourceError as err:
        raise SourceError(f"data.sources.{name}.format: {err}") from None
    if fmt.format_row is None:
        return load_builtin(name, source, seed=seed, n_train=n_train, n_val=n_val, n_test=n_test, n_report=n_report)
    try:
        parts = open_parts(source, fmt, source.split)
    except SourceError as err:
        raise SourceError(f"data.sources.{name}: {err}") from None
    available = _count(parts)
    if available == 0:
        raise SourceError(f"data.sources.{name}: {parts[0].label}: no rows")
    rows = iter_rows(parts, stable_seed(seed, "source", name), source.shuffle_buffer)
    if source.val_split is None:
        want_train, want_val, want_report = carve_sizes(available, n_train, n_val, n_report)
        val, skipped_val = draw(rows, want_val, fmt, source, name, set(), dedupe=True)
        train, skipped_train = draw(rows, want_train, fmt, source, name, {e.text for e in val}, dedupe=False)
        held_rows = rows  # the report slice: the rows after train's, disjoint from both
    else:
        want_train, want_val, want_report = min(n_train, available or n_train), n_val, n_report
        train, skipped_train = draw(rows, want_train, fmt, source, name, set(), dedupe=False)
        try:
            val_parts = open_parts(source, fmt, source.val_split)
        except SourceError as err:
            raise SourceError(f"data.sources.{name}: {err}") from None
        val_rows = iter_rows(val_parts, stable_seed(seed, "source", name, "val"), source.shuffle_buffer)
        val, skipped_val = draw(val_rows, want_val, fmt, source, name, {e.text for e in train}, dedupe=True)
        held_rows = itertools.chain(val_rows, rows)  # the report slice: the validation split's rows after val's,
        # then (a small validation split) the train split's rows after train's
    report, skipped_report = draw(held_rows, want_report, fmt, source, name,
                                  {e.text for e in train} | {e.text for e in val}, dedupe=True)
    if not train or not val:
        raise SourceError(f"data.sources.{name}: {parts[0].label}: {available or len(train) + len(val)} usable "
                          f"row(s); need at least one for train and one for validation")
    if n_report and not report:
        raise SourceError(f"data.sources.{name}: no rows left for the report slice after {len(train)} train and "
                          f"{len(val)} validation rows; lower data.n_val or data.n_train, or give it more rows")
    short = len(train) < n_train or len(val) < n_val or len(report) < n_report
    info = {
        "format": fmt.name, "path": source.path, "name": source.name, "split": source.split,
        "val_split": source.val_split, "rows_available": available, "train": len(train), "val": len(val),
        "report": len(report), "requested": {"train": n_train, "val": n_val, "report": n_report}, "short": short,
        "duplicates_skipped": skipped_train + skipped_val + skipped_report, "template": fmt.template,
        "template_version": fmt.version,
    }
    if short:
        log.warning("data.sources.%s: %s rows available; using %d train + %d val + %d report (asked %d + %d + %d)",
                    name, available, len(train), len(val), len(report), n_train, n_val, n_report)
    return Distribution(name, train, val, [], fingerprint(fmt, train, val), info, report, fingerprint(fmt, [], report))


# ----------------------------------------------------------------------------------------------- checks


def check_source(name: str, source: SourceConfig, *, peek: bool = True) -> list[str]:
    """Every problem with one source that can be found before loading it, each one line (empty list = fine).

    Checks the format is known and its options are valid, a local path exists and is not empty, and (peek)
    that the first rows of the first local file hold the format's fields. Hub ids are not contacted.
    """
    key = f"data.sources.{name}"
    try:
        fmt = get_format(source.format)
    except SourceError as err:
        return [f"{key}.format: {err}"]
    problems = [f"{key}.{k}={getattr(source, k)}: must be a positive integer or null"
                for k in ("n_train", "n_val", "n_report", "tokens_per_row")
                if getattr(source, k) is not None and getattr(source, k) < 1]
    if source.n_positive_examples < 0:
        problems.append(f"{key}.n_positive_examples={source.n_positive_examples}: must be >= 0")
    if fmt.format_row is None:
        if source.path is not None:
            problems.append(f"{key}.path: format builtin reads no files; set format to one of "
                            f"{', '.join(f for f in FORMATS if f != 'builtin')}")
        elif (source.name or name) not in GENERATORS:
            problems.append(f"{key}: no built-in generator '{source.name or name}'; available: "
                            f"{', '.join(sorted(GENERATORS))} (or give the distribution a source with a path)")
        return problems
    if not source.path:
        return [*problems, f"{key}.path: format {fmt.name} needs a hub id, a local file or a folder"]
    if is_local(source.path):
        try:
            files = local_files(source.path)
            if peek and not problems:
                _peek(source, fmt, files[0])
        except SourceError as err:
            problems.append(f"{key}: {err}")
    return problems


def _peek(source: SourceConfig, fmt: Format, file: Path, n: int = 3) -> None:
    """Format the first n rows of one local file (streamed: no Arrow cache is built)."""
    part = prepare(Part(str(file), read_file(file, fmt, source, streaming=True)), fmt, source)
    assert fmt.format_row is not None
    for i, row in enumerate(part.rows.take(n)):
        try:
            fmt.format_row(row, source)
        except MissingField as err:
            raise SourceError(missing_field(part, row, i, err.args[0])) from None

def check_source_file(file: Path, fmt: Any, source: Any, cache_dir: str | os.PathLike | None = None) -> int:
    """Every row of one training file: its structure, then the fields its format needs, as the loader reads them
    (`fields` renamed, SNI task objects expanded into instances). Returns the rows checked; DataFileError naming
    the file and the row otherwise. Remembered by content hash and the source options the format reads."""
    headerless = fmt.headerless_columns if file.suffix.lower() == ".tsv" else None
    layout = filecheck.layout_of(file, source.columns or headerless)
    options = {k: v for k, v in asdict(source).items() if k not in ("path", "n_train", "n_val", "shuffle_buffer")}
    key = filecheck.check_key(file, {"rows": layout.spec(), "format": [fmt.name, fmt.version], "source": options})
    if filecheck.passed(key, cache_dir):
        return 0
    assert fmt.format_row is not None
    rename = {col: f for f, col in source.fields.items() if col != f}
    count = rows = 0
    for row in filecheck.read_rows(file, layout):
        rows += 1
        data = {rename.get(k, k): v for k, v in row.data.items()}
        if fmt.name == "sni" and "Instances" in data:  # a task object: its instances are the rows
            batch = {k: [data.get(k)] for k in ("Definition", "Positive Examples", "Instances")}
            expanded = _expand_tasks(batch, [row.index])
            items = [{k: v[i] for k, v in expanded.items()} for i in range(len(expanded["inputs"]))]
            part = Part(str(file), None, tasks=None)
        else:
            items, part = [data], Part(str(file), None)
        for item in items:
            try:
                fmt.format_row(item, source)
            except MissingField as err:
                message = missing_field(part, item, row.index, err.args[0])
                if row.line is not None and row.line != row.index + 1 and part.tasks == 0:  # a header, blank lines
                    message = message.replace(f": row {row.index + 1}:", f": row {row.index + 1} (line {row.line}):")
                needed = fmt.required(list(data), source)
                if row.index == 0 and err.args[0] in needed and err.args[0] not in data:  # a column, not a cell
                    message += f" (format {fmt.name} needs {', '.join(needed)}; the data has {', '.join(data)})"
                raise filecheck.DataFileError(message) from None
            count += 1
    if rows == 0:
        raise filecheck.DataFileError(f"{file}: no rows")
    filecheck.mark_passed(key, cache_dir, {"file": str(file), "check": f"rows:{fmt.name}", "rows": count})
    structure = filecheck.check_key(file, {"structure": layout.spec()})  # the loader's own check: done here too
    filecheck.mark_passed(structure, cache_dir, {"file": str(file), "check": "structure", "rows": rows})
    return count

