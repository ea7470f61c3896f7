"""The prepare-data analysis: the legacy `fine_tunes.prepare_data` checks, plus chat checks.

One implementation with two faces: `manage.py prepare_data` (interactive, like the original) and
the dataset page ("Apply fixes"). It follows openai 0.28.1 `validators.py` check by check, in the
same order, with the same detections, messages and remediations, so that our findings can be
compared line by line with the original tool's output (tests/datasets/test_prepare_parity.py).

The flow, as in the original:
1. `analyze()` runs the 15 checks in order. A *necessary* remediation is applied at once, so
   later checks see its result (and report row positions in it); an error stops the analysis.
2. `apply()` applies the accepted *recommended* remediations in the same order, then builds the
   outputs: the rows to write, or a train/validation split for classification data, and the
   hints (separator, stop sequence, the suggested create command).

Deliberate differences from the legacy tool, each of which was a bug there:
* "Remove long examples" drops the rows that are long now; the original dropped by label what
  it had computed as positions, removing the wrong rows once an earlier fix had removed any.
* A completion emptied by "remove prefix" gets a leading space instead of crashing the tool.
* The `curie` time estimate's memory term is pandas' shallow footprint, recomputed without
  pandas. Once rows were removed, pandas also counted its index's hash table (a few hundred
  bytes, about 15 s of the estimate), which is not modelled.

The classification split is deliberately not the legacy one: it has the legacy sizes (20% for
validation, at most 1000 rows) but is stratified by label and seeded (`split_rows`, see
docs/adr/0006-stratified-classification-split.md), where the original drew
`df.sample(n=n_train, random_state=42)` at random, which could leave a rare label out of the
validation file.

Nothing here imports Django; pandas only picks the positive class, as the original did.
"""

from __future__ import annotations

import json
import os
import random
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from datasets.readers import FIELDS, ReadResult, cell_text, columns_of
from engine import chat_format

Level = Literal["info", "warning", "error"]
Row = dict[str, Any]

DOCS = "https://platform.openai.com/docs/guides/fine-tuning/preparing-your-dataset"
OPEN_ENDED = "open-ended generation"
CLASSIFICATION = "classification"
CONDITIONAL = "conditional generation"
CHAT = "chat"
PREFERENCE = "preference"
PROMPT_COMPLETION = "prompt_completion"

MIN_EXAMPLES = 100
MIN_CHAT_EXAMPLES = 10  # the fine-tuning API refuses fewer (GUIDE-2024)
LONG_EXAMPLE_CHARS = 10_000
MAX_PROMPT_PREFIX = 12
MIN_COMPLETION_PREFIX = 5
MAX_VALID_EXAMPLES = 1000
SPLIT_SEED = 42  # the legacy tool's random_state; the split is the same on every run
PROMPT_SEPARATORS: tuple[str, ...] = (
    " ->",
    "\n\n###\n\n",
    "\n\n===\n\n",
    "\n\n---\n\n",
    "\n\n===>\n\n",
)
PROMPT_SEPARATORS += ("\n\n--->\n\n",)
FALLBACK_PROMPT_SEPARATOR = "\n\n### =>\n\n"
COMPLETION_ENDINGS = ("\n", ".", " END", "***", "+++", "&&&", "$$$", "@@@", "%%%")
FALLBACK_COMPLETION_ENDING = " [END]"

# Remediation ids (stable: the browser posts them back, tests refer to them).
CONVERT_FORMAT = "convert_format"
LOWERCASE_PROMPT_KEY = "lowercase_prompt_key"
LOWERCASE_COMPLETION_KEY = "lowercase_completion_key"
REMOVE_EXTRA_COLUMNS = "remove_extra_columns"
REMOVE_EMPTY_COMPLETIONS = "remove_empty_completions"
REMOVE_DUPLICATES = "remove_duplicates"
REMOVE_LONG_EXAMPLES = "remove_long_examples"
LOWERCASE_PROMPT = "lowercase_prompt"
LOWERCASE_COMPLETION = "lowercase_completion"
ADD_PROMPT_SEPARATOR = "add_prompt_separator"
REMOVE_PROMPT_PREFIX = "remove_prompt_prefix"
REMOVE_COMPLETION_PREFIX = "remove_completion_prefix"
ADD_COMPLETION_ENDING = "add_completion_ending"
ADD_COMPLETION_SPACE = "add_completion_leading_space"
REMOVE_INVALID_EXAMPLES = "remove_invalid_examples"
REMOVE_UNREADABLE = "remove_unreadable_lines"
REMOVE_IDENTICAL_PAIRS = "remove_identical_pairs"
SPLIT = "split_train_valid"

# The legacy validator names, used in "ERROR in <name> validator: ..." lines.
LEGACY_NAMES = {
    "read_format": "read_any_format",
    "prompt_column": "necessary_column",
    "completion_column": "necessary_column",
    "prompt_suffix": "common_suffix",
    "completion_suffix": "common_suffix",
}


@dataclass(frozen=True)
class Remediation:
    id: str
    necessary: bool  # necessary ones are applied by analyze(); the rest wait for apply()
    message: str  # the legacy wording, e.g. "Remove 3 duplicate rows"
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "necessary" if self.necessary else "recommended"

    def to_json(self) -> dict[str, Any]:
        # Row lists can be long and the page doesn't need them (apply() recomputes them).
        params = {k: v for k, v in self.params.items() if k != "rows"}
        return {"id": self.id, "kind": self.kind, "message": self.message, "params": params}


@dataclass(frozen=True)
class Finding:
    id: str  # the check, e.g. "duplicates"
    level: Level
    message: str  # the legacy message without its leading "\n- "
    remediation: Remediation | None = None
    rows: tuple[int, ...] = ()  # 0-based positions the message refers to (legacy numbering)
    fatal: bool = False  # the legacy tool aborted here
    # The same rows as indexes into the rows as read: the positions above count rows that
    # survived earlier necessary fixes, as the original did.
    sources: tuple[int, ...] = ()

    def to_json(
        self, *, line_numbers: Sequence[int] | None = None, max_rows: int = 200
    ) -> dict[str, Any]:
        lines = None
        if line_numbers is not None:
            lines = [line_numbers[i] for i in self.sources[:max_rows]]
        return {
            "id": self.id,
            "level": self.level,
            "message": _abbreviate_rows(self.message, self.rows),
            "rows": list(self.rows[:max_rows]),
            "row_count": len(self.rows),
            "lines": lines,
            "remediation": self.remediation.to_json() if self.remediation else None,
            "fatal": self.fatal,
        }


@dataclass
class Analysis:
    format: str  # prompt_completion | chat
    examples: int  # rows as read
    findings: list[Finding]
    # The rows after the necessary remediations: what the recommended ones apply to.
    rows: list[Row] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    task_type: str | None = None
    converted: bool = False  # a format conversion (CSV → JSONL, ...) is necessary
    # The 1-based line of each row read (JSONL), to show findings by line.
    line_numbers: list[int] | None = None
    # Common endings of the analysed rows: the separator and stop sequence the page highlights.
    prompt_suffix: str = ""
    completion_suffix: str = ""

    @property
    def fatal(self) -> Finding | None:
        return next((f for f in self.findings if f.fatal), None)

    @property
    def remediations(self) -> list[Remediation]:
        return [f.remediation for f in self.findings if f.remediation is not None]

    @property
    def recommended(self) -> list[Remediation]:
        return [r for r in self.remediations if not r.necessary]

    @property
    def necessary(self) -> list[Remediation]:
        return [r for r in self.remediations if r.necessary]

    @property
    def offers_split(self) -> bool:
        return self.task_type == CLASSIFICATION and self.fatal is None

    def to_json(self) -> dict[str, Any]:
        """What File.findings stores: everything but the rows."""
        return {
            "version": 1,
            "format": self.format,
            "examples": self.examples,
            "task_type": self.task_type,
            "findings": [f.to_json(line_numbers=self.line_numbers) for f in self.findings],
            "offers_split": self.offers_split,
            "prompt_suffix": self.prompt_suffix,
            "completion_suffix": self.completion_suffix,
            "fatal": self.fatal is not None,
        }


@dataclass
class Outputs:
    """What `apply()` produced: the rows to write and the hints the original tool printed."""

    rows: list[Row]
    train: list[Row] | None
    valid: list[Row] | None
    changed: bool  # a necessary or accepted remediation changed the data: write a new file
    task_type: str | None
    prompt_suffix: str
    completion_suffix: str
    classification: dict[str, Any] | None  # n_classes, positive_class (only with a split)
    notes: list[str] = field(default_factory=list)

    @property
    def split(self) -> bool:
        return self.train is not None

    @property
    def create_options(self) -> str:
        """The extra `fine_tunes.create` options the original suggested after a split."""
        if not self.classification:
            return ""
        options = " --compute_classification_metrics"
        if self.classification["n_classes"] == 2:
            return (
                options
                + f' --classification_positive_class "{self.classification["positive_class"]}"'
            )
        return options + f" --classification_n_classes {self.classification['n_classes']}"


# --- analysis -----------------------------------------------------------------------------


def analyze(data: ReadResult | Sequence[Any] | Any) -> Analysis:
    """Run the checks on what a reader returned, a list of JSON rows, or a pandas DataFrame."""
    read: ReadResult | None = None
    if isinstance(data, ReadResult):
        read, rows = data, list(data.rows)
    elif hasattr(data, "to_dict") and hasattr(data, "columns"):
        frame: Any = data  # a pandas DataFrame, without importing pandas to say so
        rows = frame.fillna("").astype(str).to_dict("records")
    else:
        rows = list(data)

    preamble: list[Finding] = []
    if read is not None and read.message is not None:
        conversion = (
            Remediation(CONVERT_FORMAT, True, read.conversion, {"from": read.kind})
            if read.conversion
            else None
        )
        preamble.append(Finding("read_format", "info", read.message, conversion))
    if read is not None and read.skipped:
        # Lines a lenient read left out (the dataset page reads files that failed validation).
        lines = [line for line, _ in read.skipped]
        preamble.append(
            Finding(
                "unreadable_lines",
                "warning",
                f"{len(lines)} lines are not JSON objects and are left out. These are lines: "
                f"{lines}",
                Remediation(REMOVE_UNREADABLE, True, f"Remove {len(lines)} unreadable lines"),
            )
        )

    if is_preference(rows):
        analysis = _analyze_preference(rows)
    elif is_chat(rows):
        analysis = _analyze_chat(rows)
    else:
        columns = read.columns if read is not None and read.columns else columns_of(rows)
        analysis = _analyze_prompt_completion(rows, columns)
    analysis.findings[:0] = preamble
    analysis.converted = any(f.id == "read_format" and f.remediation for f in preamble)
    analysis.line_numbers = read.line_numbers if read is not None else None
    return analysis


def is_chat(rows: Sequence[Any]) -> bool:
    """Chat data if any object has a `messages` key and none has a `prompt` key."""
    has_messages = any(isinstance(r, dict) and "messages" in r for r in rows)
    has_prompt = any(isinstance(r, dict) and "prompt" in r for r in rows)
    return has_messages and not has_prompt


def is_preference(rows: Sequence[Any]) -> bool:
    """Preference (DPO) data if the first object is a preference pair (engine.chat_format)."""
    first = next((r for r in rows if isinstance(r, dict)), None)
    return first is not None and chat_format.is_preference_row(first)


class _Stop(Exception):
    """A fatal finding: the original tool aborted here."""


@dataclass
class _State:
    rows: list[Row]
    columns: list[str]
    findings: list[Finding] = field(default_factory=list)
    # For each current row, its index among the rows as read (rows get removed on the way).
    origins: list[int] = field(default_factory=list)

    def keep(self, predicate: Callable[[Row], bool]) -> None:
        kept = [(r, o) for r, o in zip(self.rows, self.origins, strict=True) if predicate(r)]
        self.rows = [r for r, _ in kept]
        self.origins = [o for _, o in kept]

    def add(self, finding: Finding) -> None:
        if finding.rows and not finding.sources:
            finding = replace(finding, sources=tuple(self.origins[p] for p in finding.rows))
        self.findings.append(finding)
        if finding.fatal:
            raise _Stop


def _analyze_prompt_completion(raw_rows: Sequence[Any], columns: list[str]) -> Analysis:
    bad = [i for i, row in enumerate(raw_rows) if not isinstance(row, dict)]
    rows = [
        {c: cell_text(row.get(c)) for c in columns} for row in raw_rows if isinstance(row, dict)
    ]
    origins = [i for i, row in enumerate(raw_rows) if isinstance(row, dict)]
    state = _State(rows=rows, columns=list(columns), origins=origins)
    examples = len(raw_rows)
    try:
        if bad:
            state.add(
                Finding(
                    "data_type",
                    "error",
                    f"{len(bad)} rows are not JSON objects with `prompt` and `completion` "
                    f"keys. These are rows: {bad[:100]}",
                    rows=tuple(bad),
                    sources=tuple(bad),
                    fatal=True,
                )
            )
        for check in CHECKS:
            check(state)
    except _Stop:
        pass
    complete = _has_fields(state)
    return Analysis(
        format=PROMPT_COMPLETION,
        examples=examples,
        findings=state.findings,
        rows=state.rows,
        columns=state.columns,
        task_type=infer_task_type(state.rows) if complete else None,
        prompt_suffix=common_xfix([r["prompt"] for r in state.rows], suffix=True)
        if complete
        else "",
        completion_suffix=(
            common_xfix([r["completion"] for r in state.rows], suffix=True) if complete else ""
        ),
    )


def _has_fields(state: _State) -> bool:
    return all(f in state.columns for f in FIELDS)


def infer_task_type(rows: Sequence[Row]) -> str:
    """The legacy heuristic: no prompt text at all, few distinct completions, or neither."""
    if sum(len(r["prompt"]) for r in rows) == 0:
        return OPEN_ENDED
    if len({r["completion"] for r in rows}) < len(rows) / 3:
        return CLASSIFICATION
    return CONDITIONAL


def common_xfix(values: Sequence[str], *, suffix: bool) -> str:
    """The longest common suffix (or prefix) of all values; "" for no values."""
    if suffix:
        return os.path.commonprefix([v[::-1] for v in values])[::-1]
    return os.path.commonprefix(list(values))


def show_newlines(text: str) -> str:
    return text.replace("\n", "\\n")


def _num_examples(state: _State) -> None:
    advice = (
        ""
        if len(state.rows) >= MIN_EXAMPLES
        else ". In general, we recommend having at least a few hundred examples. We've found "
        "that performance tends to linearly increase for every doubling of the number of examples"
    )
    level: Level = "info" if not advice else "warning"
    state.add(
        Finding(
            "num_examples",
            level,
            f"Your file contains {len(state.rows)} prompt-completion pairs{advice}",
        )
    )


def _necessary_column(name: str, remediation_id: str) -> Callable[[_State], None]:
    def check(state: _State) -> None:
        if name in state.columns:
            return
        matches = [c for c in state.columns if str(c).lower() == name]
        if not matches:
            state.add(
                Finding(
                    f"{name}_column",
                    "error",
                    f"`{name}` column/key is missing. Please make sure you name your "
                    "columns/keys appropriately, then retry",
                    fatal=True,
                )
            )
        old = matches[0]
        state.columns = [name if c == old else c for c in state.columns]
        state.rows = [{(name if k == old else k): v for k, v in r.items()} for r in state.rows]
        state.add(
            Finding(
                f"{name}_column",
                "warning",
                f"The `{name}` column/key should be lowercase",
                Remediation(
                    remediation_id, True, f"Lower case column name to `{name}`", {"from": old}
                ),
            )
        )

    return check


def _additional_columns(state: _State) -> None:
    if len(state.columns) <= 2:
        return
    extra = [c for c in state.columns if c not in FIELDS]
    # The original warns once per extra column: its substring test always matches the column
    # itself. Kept verbatim, so the transcript matches.
    warnings = "".join(
        f"\n  WARNING: Some of the additional columns/keys contain `{ac}` in their name. These "
        f"will be ignored, and the column/key `{ac}` will be used instead. This could also "
        "result from a duplicate column/key in the provided file."
        for ac in extra
        if any(ac in c for c in extra)
    )
    state.columns = list(FIELDS)
    state.rows = [{f: r[f] for f in FIELDS} for r in state.rows]
    state.add(
        Finding(
            "additional_columns",
            "warning",
            "The input file should contain exactly two columns/keys per row. Additional "
            f"columns/keys present are: {extra}{warnings}",
            Remediation(
                REMOVE_EXTRA_COLUMNS,
                True,
                f"Remove additional columns/keys: {extra}",
                {"columns": extra},
            ),
        )
    )


def _empty_completions(state: _State) -> None:
    empty = [i for i, r in enumerate(state.rows) if r["completion"] == ""]
    if not empty:
        return
    state.add(
        Finding(
            "empty_completion",
            "warning",
            f"`completion` column/key should not contain empty strings. These are rows: {empty}",
            Remediation(
                REMOVE_EMPTY_COMPLETIONS, True, f"Remove {len(empty)} rows with empty completions"
            ),
            rows=tuple(empty),
        )
    )
    # After add(): the finding's rows are positions before the removal.
    state.keep(lambda r: r["completion"] != "")


def _task_type(state: _State) -> None:
    if infer_task_type(state.rows) != CLASSIFICATION:
        return
    state.add(
        Finding(
            "task_type",
            "info",
            "Based on your data it seems like you're trying to fine-tune a model for "
            "classification\n- For classification, we recommend you try one of the faster and "
            "cheaper models, such as `ada`\n- For classification, you can estimate the expected "
            "model performance by keeping a held out dataset, which is not used for training",
        )
    )


def duplicate_positions(rows: Sequence[Row], keys: Sequence[str] = FIELDS) -> list[int]:
    """Positions of rows equal (on `keys`) to an earlier row, as pandas' `duplicated()`."""
    seen: set[Any] = set()
    duplicates = []
    for i, row in enumerate(rows):
        values = tuple(row.get(k) for k in keys)
        # Strings hash as they are; chat messages (lists) through their JSON.
        key = values if all(isinstance(v, str) for v in values) else _canonical(values)
        if key in seen:
            duplicates.append(i)
        seen.add(key)
    return duplicates


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _duplicates(state: _State) -> None:
    duplicates = duplicate_positions(state.rows)
    if not duplicates:
        return
    state.add(
        Finding(
            "duplicates",
            "warning",
            f"There are {len(duplicates)} duplicated prompt-completion sets. These are rows: "
            f"{duplicates}",
            Remediation(REMOVE_DUPLICATES, False, f"Remove {len(duplicates)} duplicate rows"),
            rows=tuple(duplicates),
        )
    )


def long_positions(rows: Sequence[Row]) -> list[int]:
    return [
        i
        for i, r in enumerate(rows)
        if len(r["prompt"]) + len(r["completion"]) > LONG_EXAMPLE_CHARS
    ]


def _long_examples(state: _State) -> None:
    if infer_task_type(state.rows) == OPEN_ENDED:
        return
    long = long_positions(state.rows)
    if not long:
        return
    state.add(
        Finding(
            "long_examples",
            "warning",
            f"There are {len(long)} examples that are very long. These are rows: {long}\nFor "
            "conditional generation, and for classification the examples shouldn't be longer "
            "than 2048 tokens.",
            Remediation(
                REMOVE_LONG_EXAMPLES, False, f"Remove {len(long)} long examples", {"rows": long}
            ),
            rows=tuple(long),
        )
    )


def letter_cases(texts: Iterable[str]) -> tuple[int, int]:
    """(uppercase letters, lowercase letters), with str.isalpha/isupper/islower semantics."""
    joined = "".join(texts)
    if joined.isascii():
        # Every ASCII letter is A-Z or a-z: count them in C, 26 passes instead of a loop.
        upper = sum(joined.count(c) for c in string.ascii_uppercase)
        lower = sum(joined.count(c) for c in string.ascii_lowercase)
        return upper, lower
    letters = [c for c in joined if c.isalpha()]
    return sum(map(str.isupper, letters)), sum(map(str.islower, letters))


def _lower_case(column: str, remediation_id: str) -> Callable[[_State], None]:
    def check(state: _State) -> None:
        upper, lower = letter_cases(row[column] for row in state.rows)
        if upper * 2 <= lower:
            return
        state.add(
            Finding(
                f"{column}_case",
                "warning",
                f"More than a third of your `{column}` column/key is uppercase. Uppercase "
                f"{column}s tends to perform worse than a mixture of case encountered in normal "
                "language. We recommend to lower case the data if that makes sense in your "
                f"domain. See {DOCS} for more details",
                Remediation(
                    remediation_id, False, f"Lowercase all your data in column/key `{column}`"
                ),
            )
        )

    return check


def _suggest(values: Sequence[str], options: Sequence[str], fallback: str, *, prompts: bool) -> str:
    for option in options:
        # " ->" reads badly after a multi-line prompt, so the original skipped it then.
        if prompts and option == " ->" and any("\n" in v for v in values):
            continue
        if any(option in v for v in values):
            continue
        return option
    return fallback


def _common_suffix_message(
    what: str, suffix: str, suggested: str, values: Sequence[str]
) -> tuple[str, Level]:
    message = f"All {what}s end with suffix `{show_newlines(suffix)}`"
    level: Level = "info"
    if len(suffix) > 10:
        message += (
            ". This suffix seems very long. Consider replacing with a shorter suffix, such as "
            f"`{show_newlines(suggested)}`"
        )
        level = "warning"
    if any(suffix in v[: -len(suffix)] for v in values):
        advice = (
            "We strongly suggest that you review your prompts and add a unique suffix"
            if what == "prompt"
            else "We suggest that you review your completions and add a unique ending"
        )
        message += (
            f"\n  WARNING: Some of your {what}s contain the suffix `{suffix}` more than once. "
            + advice
        )
        level = "warning"
    return message, level


def _prompt_suffix(state: _State) -> None:
    prompts = [r["prompt"] for r in state.rows]
    suggested = _suggest(prompts, PROMPT_SEPARATORS, FALLBACK_PROMPT_SEPARATOR, prompts=True)
    if infer_task_type(state.rows) == OPEN_ENDED:
        return
    suffix = common_xfix(prompts, suffix=True)
    if all(p == suffix for p in prompts):
        state.add(
            Finding(
                "prompt_suffix",
                "error",
                f"All prompts are identical: `{suffix}`\nConsider leaving the prompts blank if "
                "you want to do open-ended generation, otherwise ensure prompts are different",
                fatal=True,
            )
        )
    if suffix:
        message, level = _common_suffix_message("prompt", suffix, suggested, prompts)
        state.add(Finding("prompt_suffix", level, message))
        return
    state.add(
        Finding(
            "prompt_suffix",
            "warning",
            "Your data does not contain a common separator at the end of your prompts. Having a "
            "separator string appended to the end of the prompt makes it clearer to the "
            "fine-tuned model where the completion should begin. See "
            f"{DOCS} for more detail and examples. If you intend to do open-ended generation, "
            "then you should leave the prompts empty",
            Remediation(
                ADD_PROMPT_SEPARATOR,
                False,
                f"Add a suffix separator `{show_newlines(suggested)}` to all prompts",
                {"suffix": suggested},
            ),
        )
    )


def _prompt_prefix(state: _State) -> None:
    prompts = [r["prompt"] for r in state.rows]
    prefix = common_xfix(prompts, suffix=False)
    if prefix == "" or all(p == prefix for p in prompts):
        return
    if len(prefix) <= MAX_PROMPT_PREFIX:
        state.add(Finding("prompt_prefix", "info", f"All prompts start with prefix `{prefix}`"))
        return
    state.add(
        Finding(
            "prompt_prefix",
            "warning",
            f"All prompts start with prefix `{prefix}`. Fine-tuning doesn't require the "
            "instruction specifying the task, or a few-shot example scenario. Most of the time "
            "you should only add the input data into the prompt, and the desired output into "
            "the completion",
            Remediation(
                REMOVE_PROMPT_PREFIX,
                False,
                f"Remove prefix `{prefix}` from all prompts",
                {"prefix": prefix},
            ),
        )
    )


def _completion_prefix(state: _State) -> None:
    completions = [r["completion"] for r in state.rows]
    prefix = common_xfix(completions, suffix=False)
    if len(prefix) < MIN_COMPLETION_PREFIX or all(c == prefix for c in completions):
        return
    state.add(
        Finding(
            "completion_prefix",
            "warning",
            f"All completions start with prefix `{prefix}`. Most of the time you should only add "
            "the output data into the completion, without any prefix",
            Remediation(
                REMOVE_COMPLETION_PREFIX,
                False,
                f"Remove prefix `{prefix}` from all completions",
                {"prefix": prefix, "keep_space": prefix.startswith(" ")},
            ),
        )
    )


def _completion_suffix(state: _State) -> None:
    if infer_task_type(state.rows) in (OPEN_ENDED, CLASSIFICATION):
        return
    completions = [r["completion"] for r in state.rows]
    suffix = common_xfix(completions, suffix=True)
    if all(c == suffix for c in completions):
        state.add(
            Finding(
                "completion_suffix",
                "error",
                f"All completions are identical: `{suffix}`\nEnsure completions are different, "
                f"otherwise the model will just repeat `{suffix}`",
                fatal=True,
            )
        )
    suggested = _suggest(completions, COMPLETION_ENDINGS, FALLBACK_COMPLETION_ENDING, prompts=False)
    if suffix:
        message, level = _common_suffix_message("completion", suffix, suggested, completions)
        state.add(Finding("completion_suffix", level, message))
        return
    state.add(
        Finding(
            "completion_suffix",
            "warning",
            "Your data does not contain a common ending at the end of your completions. Having a "
            "common ending string appended to the end of the completion makes it clearer to the "
            f"fine-tuned model where the completion should end. See {DOCS} for more detail and "
            "examples.",
            Remediation(
                ADD_COMPLETION_ENDING,
                False,
                f"Add a suffix ending `{show_newlines(suggested)}` to all completions",
                {"suffix": suggested},
            ),
        )
    )


def _completion_space(state: _State) -> None:
    firsts = {r["completion"][:1] for r in state.rows}
    if len(firsts) == 1 and state.rows[0]["completion"][:1] == " ":
        return
    state.add(
        Finding(
            "completion_leading_space",
            "warning",
            "The completion should start with a whitespace character (` `). This tends to "
            f"produce better results due to the tokenization we use. See {DOCS} for more details",
            Remediation(
                ADD_COMPLETION_SPACE,
                False,
                "Add a whitespace character to the beginning of the completion",
            ),
        )
    )


# The 15 legacy validators, in execution order (get_validators()).
CHECKS: tuple[Callable[[_State], None], ...] = (
    _num_examples,
    _necessary_column("prompt", LOWERCASE_PROMPT_KEY),
    _necessary_column("completion", LOWERCASE_COMPLETION_KEY),
    _additional_columns,
    _empty_completions,
    _task_type,
    _duplicates,
    _long_examples,
    _lower_case("prompt", LOWERCASE_PROMPT),
    _lower_case("completion", LOWERCASE_COMPLETION),
    _prompt_suffix,
    _prompt_prefix,
    _completion_prefix,
    _completion_suffix,
    _completion_space,
)


# --- chat ---------------------------------------------------------------------------------

CHAT_ROLES = chat_format.ROLES
CHAT_MESSAGE_KEYS: tuple[str, ...] = (
    "role",
    "content",
    "name",
    "function_call",
    "weight",
    "tool_calls",
)
CHAT_MESSAGE_KEYS += ("tool_call_id",)
# The example keys that make two chat examples the same example.
CHAT_KEYS = ("messages", "tools", "functions", "parallel_tool_calls")
# The cookbook's format-error categories (Chat_finetuning_data_prep.ipynb) and what they mean,
# then ours for what the cookbook predates (tools) or lets through.
CHAT_ERRORS = {
    "data_type": "the example is not a JSON object",
    "missing_messages_list": "the example has no `messages` list",
    "message_missing_key": "a message lacks `role` or `content`",
    "message_unrecognized_key": "a message has a key other than "
    + ", ".join(f"`{k}`" for k in CHAT_MESSAGE_KEYS),
    "unrecognized_role": "a message's role is not one of "
    + ", ".join(f"`{r}`" for r in CHAT_ROLES),
    "missing_content": "a message's content is missing or not a string (and it makes no call)",
    "example_missing_assistant_message": "the example has no assistant message",
    "nothing_to_learn": "every assistant message has weight 0, so training learns nothing from "
    "the example",
    "format_error": "the example breaks OpenAI's chat format",
}
# Categories that are a warning rather than an error (the example is well formed).
CHAT_WARNINGS = ("nothing_to_learn",)


def chat_errors(example: Any) -> list[str]:
    """The categories one example falls into (empty: the example validates and trains).

    Whether an example is valid is the shared schema's call (`engine.chat_format`, as upload
    validation and training decide it); the categories say why, in the cookbook's terms where
    they apply.
    """
    if not chat_format.validate_example(example):
        return []
    if not isinstance(example, dict):
        return ["data_type"]
    messages = example.get("messages")
    if not messages or not isinstance(messages, list):
        return ["missing_messages_list"]
    found: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            found.append("data_type")
            continue
        if "role" not in message or "content" not in message:
            found.append("message_missing_key")
        if any(k not in CHAT_MESSAGE_KEYS for k in message):
            found.append("message_unrecognized_key")
        if message.get("role") not in CHAT_ROLES:
            found.append("unrecognized_role")
        content = message.get("content")
        makes_call = message.get("function_call") or message.get("tool_calls")
        if not makes_call and not isinstance(content, str | list):
            found.append("missing_content")
    replies = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if not replies:
        found.append("example_missing_assistant_message")
    elif all(m.get("weight", 1) == 0 for m in replies):
        found.append("nothing_to_learn")
    return list(dict.fromkeys(found)) or ["format_error"]


def _first_problem(example: Any) -> str:
    errors = chat_format.validate_example(example)
    return errors[0].message if errors else ""


def _analyze_chat(rows: list[Any]) -> Analysis:
    n = len(rows)
    state = _State(rows=list(rows), columns=[], origins=list(range(n)))
    advice = (
        ""
        if n >= MIN_CHAT_EXAMPLES
        else f". At least {MIN_CHAT_EXAMPLES} examples are required to fine-tune a chat model; "
        "improvements typically show from 50 to 100"
    )
    level: Level = "info" if not advice else "warning"
    state.add(Finding("num_examples", level, f"Your file contains {n} chat examples{advice}"))

    by_error: dict[str, list[int]] = {key: [] for key in CHAT_ERRORS}
    invalid: list[int] = []
    for i, example in enumerate(rows):
        errors = chat_errors(example)
        for key in errors:
            by_error[key].append(i)
        if errors:
            invalid.append(i)
    for key, positions in by_error.items():
        if positions:
            detail = ""
            if key == "format_error":
                shown = [f"row {i}: {_first_problem(rows[i])}" for i in positions[:3]]
                detail = "\n" + "\n".join(shown) + ("\n..." if len(positions) > 3 else "")
            state.add(
                Finding(
                    f"chat_{key}",
                    "warning" if key in CHAT_WARNINGS else "error",
                    f"{len(positions)} examples have `{key}` errors: {CHAT_ERRORS[key]}. These "
                    f"are rows: {positions}{detail}",
                    rows=tuple(positions),
                )
            )
    if invalid:
        # Like empty completions in the legacy tool: such examples can't be trained on.
        state.add(
            Finding(
                "chat_invalid_examples",
                "warning",
                f"{len(invalid)} examples have format errors and can't be used for fine-tuning",
                Remediation(
                    REMOVE_INVALID_EXAMPLES,
                    True,
                    f"Remove {len(invalid)} examples with format errors",
                ),
                rows=tuple(invalid),
            )
        )
        state.keep(lambda row: not chat_errors(row))

    for role in ("system", "user"):
        missing = [
            i
            for i, row in enumerate(state.rows)
            if not any(m.get("role") == role for m in row["messages"])
        ]
        if missing:
            state.add(
                Finding(
                    f"chat_missing_{role}",
                    "warning" if role == "user" else "info",
                    f"{len(missing)} examples have no {role} message. These are rows: {missing}",
                    rows=tuple(missing),
                )
            )

    tool_use = _tool_use(state.rows)
    if tool_use:
        state.add(Finding("chat_tools", "info", tool_use))

    duplicates = duplicate_positions(state.rows, CHAT_KEYS)
    if duplicates:
        state.add(
            Finding(
                "duplicates",
                "warning",
                f"There are {len(duplicates)} duplicated examples. These are rows: {duplicates}",
                Remediation(REMOVE_DUPLICATES, False, f"Remove {len(duplicates)} duplicate rows"),
                rows=tuple(duplicates),
            )
        )
    return Analysis(
        format=CHAT, examples=n, findings=state.findings, rows=state.rows, task_type=CHAT
    )


PREFERENCE_KEYS = chat_format.PREFERENCE_KEYS


def identical_positions(rows: Sequence[Row]) -> list[int]:
    """Valid pairs whose two outputs say the same thing: DPO learns nothing from them."""
    found = []
    for i, row in enumerate(rows):
        preferred, other = chat_format.normalise_preference(row).output_texts()
        if preferred == other:
            found.append(i)
    return found


def _preference_lengths(rows: Sequence[Row]) -> str:
    """Mean characters of the inputs and of each output (the validator counts tokens)."""

    def chars(messages: Any) -> int:
        return sum(len(chat_format.content_text(m.get("content"))) for m in messages)

    n = len(rows) or 1
    given = sum(chars(r["input"]["messages"]) for r in rows) / n
    preferred = sum(chars(r["preferred_output"]) for r in rows) / n
    other = sum(chars(r["non_preferred_output"]) for r in rows) / n
    note = ""
    if preferred and other and max(preferred, other) > 2 * min(preferred, other):
        note = (
            ". One output is much longer than the other on average: DPO sums log-probabilities "
            "over the output's tokens, so it can learn length rather than quality"
        )
    return (
        f"Mean length in characters: input {given:.0f}, preferred output {preferred:.0f}, "
        f"non-preferred output {other:.0f}{note}"
    )


def _analyze_preference(rows: list[Any]) -> Analysis:
    """Preference pairs (DPO): format errors (the shared schema's), duplicates, pairs whose
    outputs are identical, and lengths."""
    n = len(rows)
    state = _State(rows=list(rows), columns=[], origins=list(range(n)))
    advice = (
        ""
        if n >= MIN_CHAT_EXAMPLES
        else f". At least {MIN_CHAT_EXAMPLES} pairs are required to fine-tune with DPO"
    )
    state.add(
        Finding(
            "num_examples",
            "info" if not advice else "warning",
            f"Your file contains {n} preference pairs{advice}",
        )
    )
    invalid = [i for i, row in enumerate(rows) if chat_format.validate_preference(row)]
    if invalid:
        shown = [
            f"row {i}: {chat_format.validate_preference(rows[i])[0].message}" for i in invalid[:3]
        ]
        state.add(
            Finding(
                "preference_invalid_examples",
                "warning",
                f"{len(invalid)} pairs have format errors and can't be used for fine-tuning. "
                f"These are rows: {invalid}\n" + "\n".join(shown),
                Remediation(
                    REMOVE_INVALID_EXAMPLES, True, f"Remove {len(invalid)} pairs with format errors"
                ),
                rows=tuple(invalid),
            )
        )
        state.keep(lambda row: not chat_format.validate_preference(row))
    identical = identical_positions(state.rows)
    if identical:
        state.add(
            Finding(
                "identical_outputs",
                "warning",
                f"{len(identical)} pairs have the same preferred and non-preferred output: DPO "
                f"learns nothing from them. These are rows: {identical}",
                Remediation(
                    REMOVE_IDENTICAL_PAIRS, False, f"Remove {len(identical)} identical pairs"
                ),
                rows=tuple(identical),
            )
        )
    duplicates = duplicate_positions(state.rows, PREFERENCE_KEYS)
    if duplicates:
        state.add(
            Finding(
                "duplicates",
                "warning",
                f"There are {len(duplicates)} duplicated pairs. These are rows: {duplicates}",
                Remediation(REMOVE_DUPLICATES, False, f"Remove {len(duplicates)} duplicate rows"),
                rows=tuple(duplicates),
            )
        )
    if state.rows:
        state.add(Finding("preference_lengths", "info", _preference_lengths(state.rows)))
    return Analysis(
        format=PREFERENCE,
        examples=n,
        findings=state.findings,
        rows=state.rows,
        task_type=PREFERENCE,
    )


def _tool_use(rows: Sequence[Row]) -> str | None:
    """A summary of tool definitions, calls and untrained turns in valid chat examples."""
    with_tools = calls = replies = untrained = 0
    for row in rows:
        conversation = chat_format.normalise_example(row)
        with_tools += bool(conversation.tools)
        calls += sum(len(m.get("tool_calls", ())) for m in conversation.messages)
        replies += sum(flag is not None for flag in conversation.trained)
        untrained += sum(flag is False for flag in conversation.trained)
    if not (with_tools or calls or untrained):
        return None
    parts = []
    if with_tools or calls:
        parts.append(
            f"{with_tools} examples define tools and {calls} assistant messages call them; tool "
            "definitions and calls are trained through the model's chat template (see the user "
            'guide, "Tools")'
        )
    if untrained:
        parts.append(
            f"{untrained} of {replies} assistant messages have weight 0: they are context, and "
            "carry no loss"
        )
    return ". ".join(parts) + "."


# --- applying remediations ----------------------------------------------------------------


def apply_remediation(rows: list[Row], remediation: Remediation) -> tuple[list[Row], str | None]:
    """Apply one recommended remediation; returns the new rows and a note to show, if any."""
    params = remediation.params
    rid = remediation.id
    if rid == REMOVE_IDENTICAL_PAIRS:
        drop = set(identical_positions(rows))
        return [r for i, r in enumerate(rows) if i not in drop], None
    if rid == REMOVE_DUPLICATES:
        keys: tuple[str, ...] = CHAT_KEYS if rows and "messages" in rows[0] else FIELDS
        if rows and is_preference(rows):
            keys = PREFERENCE_KEYS
        drop = set(duplicate_positions(rows, keys))
        return [r for i, r in enumerate(rows) if i not in drop], None
    if rid == REMOVE_LONG_EXAMPLES:
        now = long_positions(rows)
        note = None
        if now != params.get("rows"):
            note = (
                "The indices of the long examples has changed as a result of a previously "
                f"applied recommendation.\nThe {len(now)} long examples to be dropped are now at "
                f"the following indices: {now}\n"
            )
        drop = set(now)
        return [r for i, r in enumerate(rows) if i not in drop], note
    if rid in (LOWERCASE_PROMPT, LOWERCASE_COMPLETION):
        column = "prompt" if rid == LOWERCASE_PROMPT else "completion"
        return [{**r, column: r[column].lower()} for r in rows], None
    if rid == ADD_PROMPT_SEPARATOR:
        return [{**r, "prompt": r["prompt"] + params["suffix"]} for r in rows], None
    if rid == REMOVE_PROMPT_PREFIX:
        cut = len(params["prefix"])
        return [{**r, "prompt": r["prompt"][cut:]} for r in rows], None
    if rid == REMOVE_COMPLETION_PREFIX:
        cut = len(params["prefix"])
        space = " " if params["keep_space"] else ""
        return [{**r, "completion": space + r["completion"][cut:]} for r in rows], None
    if rid == ADD_COMPLETION_ENDING:
        return [{**r, "completion": r["completion"] + params["suffix"]} for r in rows], None
    if rid == ADD_COMPLETION_SPACE:
        return [
            {
                **r,
                "completion": r["completion"]
                if r["completion"][:1] == " "
                else " " + r["completion"],
            }
            for r in rows
        ], None
    raise ValueError(f"Unknown remediation {rid!r}")


def apply(
    analysis: Analysis | ReadResult | Sequence[Any], accepted: Iterable[str]
) -> tuple[list[Row], Outputs]:
    """Apply the accepted recommended remediations (by id, `SPLIT` for the split) in order.

    Necessary remediations were applied by `analyze()` already. Raises ValueError when the
    analysis stopped on an error: there is nothing sensible to write then.
    """
    if not isinstance(analysis, Analysis):
        analysis = analyze(analysis)
    if analysis.fatal is not None:
        raise ValueError(analysis.fatal.message)
    wanted = set(accepted)
    rows = list(analysis.rows)
    notes: list[str] = []
    applied = False
    for remediation in analysis.recommended:
        if remediation.id in wanted:
            rows, note = apply_remediation(rows, remediation)
            applied = True
            if note:
                notes.append(note)
    changed = applied or bool(analysis.necessary)
    outputs = finish(rows, analysis, changed=changed, split=SPLIT in wanted)
    outputs.notes[:0] = notes
    return outputs.rows, outputs


def finish(rows: list[Row], analysis: Analysis, *, changed: bool, split: bool) -> Outputs:
    """The outputs for the final rows: split them if asked and they are classification data."""
    if analysis.format in (CHAT, PREFERENCE):
        return Outputs(rows, None, None, changed, analysis.format, "", "", None)
    rows = [{f: r[f] for f in FIELDS} for r in rows]
    task_type = infer_task_type(rows)
    outputs = Outputs(
        rows=rows,
        train=None,
        valid=None,
        changed=changed,
        task_type=task_type,
        prompt_suffix=common_xfix([r["prompt"] for r in rows], suffix=True),
        completion_suffix=common_xfix([r["completion"] for r in rows], suffix=True),
        classification=None,
    )
    if split and task_type == CLASSIFICATION:
        outputs.train, outputs.valid = split_rows(rows)
        outputs.classification = classification_options(rows)
    return outputs


def split_sizes(n: int) -> tuple[int, int]:
    """(train, validation) sizes: the legacy rule, 20% for validation but at most 1000 rows."""
    n_train = max(n - MAX_VALID_EXAMPLES, int(n * 0.8))
    return n_train, n - n_train


def split_rows(rows: Sequence[Row], *, seed: int = SPLIT_SEED) -> tuple[list[Row], list[Row]]:
    """A train/validation split stratified by label (the completion), deterministic for a seed.

    The sizes are the legacy tool's (`split_sizes`); which rows go where differs on purpose
    (docs/adr/0006-stratified-classification-split.md): the legacy `df.sample` could leave a
    rare class out of the validation file, so its classification metrics never saw that class.
    Each label gets its share of the validation rows (`allocate`), every label with two or more
    examples gets at least one validation row, and keeps at least one training row, wherever
    the sizes allow. The validation rows keep the file's order; the training rows are
    shuffled, as the legacy sample was.
    """
    _, n_valid = split_sizes(len(rows))
    by_label: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_label.setdefault(row["completion"], []).append(i)
    groups = list(by_label.values())  # in order of first appearance: deterministic
    quotas = allocate([len(g) for g in groups], n_valid)
    rng = random.Random(seed)
    chosen: set[int] = set()
    for group, quota in zip(groups, quotas, strict=True):
        chosen.update(rng.sample(group, quota))
    valid = [row for i, row in enumerate(rows) if i in chosen]
    train = [row for i, row in enumerate(rows) if i not in chosen]
    rng.shuffle(train)
    return train, valid


def allocate(counts: Sequence[int], total: int) -> list[int]:
    """Split `total` validation rows over classes of `counts` rows, proportionally.

    Each class gets its share rounded down; then every class of two or more rows that got none
    gets one (the biggest first), from the rows left over or else from the class with the most;
    then what is left goes by largest remainder. A class keeps at least one training row
    wherever possible.
    """
    n = sum(counts)
    if not n or total <= 0:
        return [0] * len(counts)
    total = min(total, n)
    ideal = [total * c / n for c in counts]
    quotas = [int(x) for x in ideal]
    left = total - sum(quotas)
    for k in sorted(range(len(counts)), key=lambda k: (-counts[k], k)):
        if quotas[k] or counts[k] < 2:
            continue
        if not left:
            donor = max(range(len(counts)), key=lambda j: (quotas[j], -j))
            if quotas[donor] < 2:
                break  # nobody can spare a row: the budget is spent
            quotas[donor], left = quotas[donor] - 1, left + 1
        quotas[k], left = 1, left - 1
    by_remainder = sorted(range(len(counts)), key=lambda k: (quotas[k] - ideal[k], -counts[k], k))
    for keep in (1, 0):  # keeping no training row is the last resort, for degenerate inputs
        grew = True
        while left and grew:
            grew = False
            for k in by_remainder:
                if left and quotas[k] < counts[k] - keep:
                    quotas[k], left, grew = quotas[k] + 1, left - 1, True
    return quotas


def classification_options(rows: Sequence[Row]) -> dict[str, Any]:
    """n_classes, and the positive class (the most frequent completion) for binary tasks."""
    import pandas as pd

    counts = pd.Series([r["completion"] for r in rows]).value_counts()
    n_classes = int(len(counts))
    return {
        "n_classes": n_classes,
        "positive_class": str(counts.index[0]) if n_classes == 2 else None,
    }


def estimate_training_seconds(outputs: Outputs, *, index_rows_dropped: bool) -> float:
    """The original tool's `curie` estimate (kept for its final hint, not used for scheduling)."""
    n = len(outputs.rows)
    if outputs.task_type == CLASSIFICATION:
        return n * 1.44 + 140
    # pandas' shallow memory: 8 bytes per object cell (2 columns) plus the index.
    index_bytes = 8 * n if index_rows_dropped else 132
    return (index_bytes + 16 * n) * 0.0515 + 140


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{round(seconds, 2)} seconds"
    if seconds < 3600:
        return f"{round(seconds / 60, 2)} minutes"
    if seconds < 86400:
        return f"{round(seconds / 3600, 2)} hours"
    return f"{round(seconds / 86400, 2)} days"


# --- mapping table columns (the upload page's mapping step) ------------------------------


def rows_to_prompt_completion(
    rows: Sequence[Any], *, prompt: str | None, completion: str
) -> list[Row]:
    """Table rows → prompt/completion rows; no prompt column means open-ended generation."""
    return [
        {
            "prompt": cell_text(row.get(prompt)) if prompt else "",
            "completion": cell_text(row.get(completion)),
        }
        for row in rows
        if isinstance(row, dict)
    ]


def rows_to_preference(
    rows: Sequence[Any],
    *,
    system: str | None,
    system_text: str,
    prompt: str,
    chosen: str,
    rejected: str,
) -> list[Row]:
    """Table rows → preference pairs (DPO): an optional system message and the prompt as the
    input, the chosen and rejected cells as the preferred and non-preferred outputs."""
    pairs = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        messages = []
        system_content = cell_text(row.get(system)) if system else system_text
        if system_content:
            messages.append({"role": "system", "content": system_content})
        messages.append({"role": "user", "content": cell_text(row.get(prompt))})
        pairs.append(
            {
                "input": {"messages": messages},
                "preferred_output": [{"role": "assistant", "content": cell_text(row.get(chosen))}],
                "non_preferred_output": [
                    {"role": "assistant", "content": cell_text(row.get(rejected))}
                ],
            }
        )
    return pairs


def rows_to_chat(
    rows: Sequence[Any],
    *,
    system: str | None,
    system_text: str,
    user: str,
    assistant: str,
) -> list[Row]:
    """Table rows → chat examples: an optional system message, then one user/assistant turn.

    An empty system cell leaves the system message out; empty user or assistant cells are kept,
    so that the analysis reports them and "Apply fixes" can remove them.
    """
    examples = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        messages = []
        system_content = cell_text(row.get(system)) if system else system_text
        if system_content:
            messages.append({"role": "system", "content": system_content})
        messages.append({"role": "user", "content": cell_text(row.get(user))})
        messages.append({"role": "assistant", "content": cell_text(row.get(assistant))})
        examples.append({"messages": messages})
    return examples


# --- serialising --------------------------------------------------------------------------


def jsonl_bytes(rows: Iterable[Row]) -> bytes:
    """JSONL as the original wrote it (`force_ascii=False`), one object per line."""
    return "".join(_compact(r) + "\n" for r in rows).encode("utf-8")


def _abbreviate_rows(message: str, rows: Sequence[int], keep: int = 20) -> str:
    """Shorten a "These are rows: [...]" list for storage; the CLI prints it in full."""
    if len(rows) <= keep:
        return message
    full = str(list(rows))
    short = str(list(rows[:keep]))[:-1] + f", … ({len(rows) - keep:,} more)]"
    return message.replace(full, short, 1)


def _compact(row: Row) -> str:
    # The original's separators (pandas to_json), so the files look the same.
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))
