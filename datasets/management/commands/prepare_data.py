"""`manage.py prepare_data -f FILE [-q]`: the legacy `openai tools fine_tunes.prepare_data`.

Interactive like the original: every recommended remediation is a `[Y/n]` question (`-q` says
yes to all), necessary ones are applied without asking, and the output, file names, final hints
and exit codes are the original's (reference §8.5). The analysis itself is datasets.prepare, the
same code the dataset page's "Apply fixes" runs.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn, TextIO

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from datasets import prepare, readers
from datasets.prepare import CHAT, CLASSIFICATION, Outputs


class Command(BaseCommand):
    help = (
        "Analyze a JSONL, JSON, CSV, TSV, TXT or XLSX file of prompt-completion (or chat) "
        "examples, propose fixes and write a prepared JSONL file."
    )
    # An offline tool: it needs neither the database nor the URL configuration.
    requires_system_checks: list[str] = []
    stealth_options = ("stdin",)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "-f",
            "--file",
            required=True,
            help="JSONL, JSON, CSV, TSV, TXT or XLSX file containing prompt-completion examples "
            "to be analyzed. This should be the local file path.",
        )
        parser.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            help="Auto accepts all suggestions, without asking for user input. To be used "
            "within scripts.",
        )
        parser.add_argument(
            "--no-header",
            action="store_true",
            help="CSV, TSV and XLSX: the first row is data, not column names.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self.auto_accept: bool = options["quiet"]
        # call_command(..., stdin=StringIO("n\n")) drives the questions in tests.
        self.stdin: TextIO = options.get("stdin") or sys.stdin
        fname: str = options["file"]

        self._write("Analyzing...\n")
        try:
            read = readers.read_path(fname, header=not options.get("no_header", False))
        except readers.ReadError as exc:
            self._abort("read_any_format", exc.message)
        analysis = prepare.analyze(read)
        for finding in analysis.findings:
            if finding.fatal:
                self._abort(prepare.LEGACY_NAMES.get(finding.id, finding.id), finding.message)
            self._write("\n- " + finding.message)

        rows = analysis.rows
        applied = False
        if analysis.remediations:
            self._write("\n\nBased on the analysis we will perform the following actions:\n")
            for remediation in analysis.remediations:
                if remediation.necessary:
                    self._write(f"- [Necessary] {remediation.message}\n")
                elif self._accept(f"- [Recommended] {remediation.message} [Y/n]: "):
                    rows, note = prepare.apply_remediation(rows, remediation)
                    applied = True
                    if note:
                        self._write(note)
        else:
            self._write("\n\nNo remediations found.\n")

        changed = applied or bool(analysis.necessary)
        self._write_out(fname, rows, analysis, changed=changed)

    def _write_out(
        self, fname: str, rows: list[dict[str, Any]], analysis: prepare.Analysis, *, changed: bool
    ) -> None:
        outputs = prepare.finish(rows, analysis, changed=changed, split=False)
        split = outputs.task_type == CLASSIFICATION and self._accept(
            "- [Recommended] Would you like to split into training and validation set? [Y/n]: "
        )
        if split:
            outputs = prepare.finish(rows, analysis, changed=changed, split=True)
        prompt_suffix = prepare.show_newlines(outputs.prompt_suffix)
        completion_suffix = prepare.show_newlines(outputs.completion_suffix)
        stop_hint = (
            f' Make sure to include `stop=["{completion_suffix}"]` so that the generated texts '
            "ends at the expected place."
            if completion_suffix
            else ""
        )
        dropped = len(outputs.rows) != analysis.examples

        if not changed and not split:
            self._write(
                f"\nYou can use your file for fine-tuning:\n> {self._create(fname, analysis)}\n\n"
                f"{self._separator_hint(prompt_suffix, analysis, always=True)}{stop_hint}\n"
            )
            self._estimate(outputs, dropped)
        elif self._accept("\n\nYour data will be written to a new JSONL file. Proceed [Y/n]: "):
            names = output_names(fname, split=split)
            contents = [outputs.train or [], outputs.valid or []] if split else [outputs.rows]
            for name, content in zip(names, contents, strict=True):
                with open(name, "wb") as fh:
                    fh.write(prepare.jsonl_bytes(content))
            files = ("s" if split else "") + " to `" + "` and `".join(names)
            valid = f' -v "{names[1]}"' if split else ""
            command = self._create(names[0], analysis) + valid + outputs.create_options
            self._write(
                f"\nWrote modified file{files}`\nFeel free to take a look!\n\n"
                f"Now use that file when fine-tuning:\n> {command}\n\n"
                f"{self._separator_hint(prompt_suffix, analysis, always=False)}{stop_hint}\n"
            )
            self._estimate(outputs, dropped)
        else:
            self._write("Aborting... did not write the file\n")

    def _create(self, fname: str, analysis: prepare.Analysis) -> str:
        if analysis.format == CHAT:
            # Chat data needs the current API; the legacy command only takes prompt-completion.
            model = settings.TUNERY_DEFAULT_BASE_MODEL
            return f'openai api fine_tuning.job.create -t "{fname}" -m {model}'
        return f'openai api fine_tunes.create -t "{fname}"'

    def _separator_hint(self, suffix: str, analysis: prepare.Analysis, *, always: bool) -> str:
        # The original printed this line unconditionally when nothing changed (even with an
        # empty separator) and only for a non-empty separator after writing a file.
        if analysis.format == CHAT or (not suffix and not always):
            return ""
        return (
            "After you’ve fine-tuned a model, remember that your prompt has to end with the "
            f"indicator string `{suffix}` for the model to start generating completions, rather "
            "than continuing with the prompt."
        )

    def _estimate(self, outputs: Outputs, dropped: bool) -> None:
        if outputs.task_type == CHAT:
            return
        seconds = prepare.estimate_training_seconds(outputs, index_rows_dropped=dropped)
        self._write(
            "Once your model starts training, it'll approximately take "
            f"{prepare.format_duration(seconds)} to train a `curie` model, and less for `ada` "
            "and `babbage`. Queue will approximately take half an hour per job ahead of you.\n"
        )

    def _accept(self, question: str) -> bool:
        self._write(question)
        if self.auto_accept:
            self._write("Y\n")
            return True
        self.stdout.flush()
        answer = self.stdin.readline()
        # End of input counts as Enter, i.e. the default answer (Y).
        return answer.strip().lower() != "n"

    def _write(self, text: str) -> None:
        self.stdout.write(text, ending="")

    def _abort(self, validator: str, message: str) -> NoReturn:
        self.stdout.flush()
        self.stderr.write(
            f"\n\nERROR in {validator} validator: {message}\n\nAborting...", ending=""
        )
        self.stderr.flush()
        raise SystemExit(1)


def output_names(fname: str, *, split: bool) -> list[str]:
    """`<stem>_prepared[_train|_valid].jsonl`, with ` (1)`, ` (2)`... while any is taken."""
    suffixes = ["_train", "_valid"] if split else [""]
    stem = os.path.splitext(fname)[0]
    index = 0
    while True:
        extra = f" ({index})" if index > 0 else ""
        names = [f"{stem}_prepared{suffix}{extra}.jsonl" for suffix in suffixes]
        if not any(os.path.isfile(name) for name in names):
            return names
        index += 1
