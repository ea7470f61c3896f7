"""Coverage-guided fuzzing of the dataset validator and readers with atheris (optional).

The CI runs the property-based fuzzer (tests/datasets/test_fuzz_validation.py); this is the
longer, coverage-guided hunt for a quiet machine. atheris is not in requirements-dev.txt (it is
a libFuzzer build, needed only here): install it into a directory of its own and run

    pip install --target /tmp/atheris atheris==3.0.0
    PYTHONPATH=/tmp/atheris .venv/bin/python scripts/fuzz_validator.py -max_total_time=600

Every input is fed to `datasets.validation.analyse_stream` and to `datasets.readers.read_any`
under each extension. Anything but their own errors (a RecursionError, a TypeError, an
UnicodeEncodeError when the report is stored) is a crash that libFuzzer saves as
`crash-<sha1>`: reproduce it with `python -m datasets.validation crash-<sha1>`.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

import atheris  # noqa: E402

with atheris.instrument_imports():
    from datasets import readers, validation

EXTENSIONS = ("jsonl", "json", "csv", "tsv", "txt", "xlsx")


def check(data: bytes) -> None:
    report = validation.analyse_stream(
        io.BytesIO(data).read, counter=None, context_length=512, max_errors=100
    )
    # What the worker stores and the pages show must encode.
    json.dumps(report.errors, ensure_ascii=False).encode("utf-8")
    json.dumps(report.stats, ensure_ascii=False).encode("utf-8")
    lines = data.count(b"\n") + 1
    assert all(e["line"] is None or 1 <= e["line"] <= lines for e in report.errors)
    for extension in EXTENSIONS:
        try:
            read = readers.read_any(io.BytesIO(data), f"fuzz.{extension}")
        except readers.ReadError:
            continue
        json.dumps(read.rows, ensure_ascii=False, default=str).encode("utf-8")


def main() -> None:
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
