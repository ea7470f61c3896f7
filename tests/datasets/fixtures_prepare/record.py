"""Record what openai 0.28.1's `openai tools fine_tunes.prepare_data` does on every fixture.

    .venv-openai028/bin/python tests/datasets/fixtures_prepare/record.py

(`make test` creates that venv from requirements-openai028.txt.) For each file in `inputs/` it
runs the legacy tool in a scratch directory holding only that file, with `-q`, and, where
`inputs/<file>.answers` exists, once more interactively, feeding those answers one per line.
It stores stdout, stderr, the exit code and every file the tool wrote under `expected/<case>/`.
tests/datasets/test_prepare_parity.py replays each case through `manage.py prepare_data` and the
browser's analysis and compares. Rerun this script after changing a fixture.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
INPUTS = HERE / "inputs"
EXPECTED = HERE / "expected"
REPO = HERE.parents[2]
LEGACY = REPO / ".venv-openai028" / "bin" / "openai"
MISSING = "does_not_exist.jsonl"
BIG = 20_000  # bytes


def output_bytes(case_name: str, name: str) -> bytes:
    """A recorded output file's content (stored as is, or gzipped when big)."""
    folder = EXPECTED / case_name / "outputs"
    if (folder / name).exists():
        return (folder / name).read_bytes()
    return gzip.decompress((folder / f"{name}.gz").read_bytes())


@dataclass(frozen=True)
class Case:
    name: str  # the directory under expected/
    filename: str  # the file passed to -f
    answers: str | None  # None: -q

    @property
    def source(self) -> Path | None:
        path = INPUTS / self.filename
        return path if path.exists() else None


def cases() -> list[Case]:
    found = [Case(MISSING, MISSING, None)]
    for path in sorted(INPUTS.iterdir()):
        if path.suffix == ".answers":
            continue
        found.append(Case(path.name, path.name, None))
        answers = path.with_name(path.name + ".answers")
        if answers.exists():
            found.append(Case(path.name + ".interactive", path.name, answers.read_text()))
    return found


def command(case: Case) -> list[str]:
    args = ["-f", case.filename] + ([] if case.answers is not None else ["-q"])
    return args


def record(case: Case) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as scratch:
        if case.source is not None:
            shutil.copy(case.source, Path(scratch) / case.filename)
        before = set(os.listdir(scratch))
        done = subprocess.run(
            [str(LEGACY), "tools", "fine_tunes.prepare_data", *command(case)],
            cwd=scratch,
            input=(case.answers or "").encode(),
            capture_output=True,
            # The legacy tool reads TXT with the locale's encoding: pin it.
            env={**os.environ, "LC_ALL": "C.UTF-8", "PYTHONUTF8": "1"},
            timeout=300,
            check=False,
        )
        target = EXPECTED / case.name
        if target.exists():
            shutil.rmtree(target)
        (target / "outputs").mkdir(parents=True)
        (target / "stdout.txt").write_bytes(done.stdout)
        (target / "stderr.txt").write_bytes(done.stderr)
        written = sorted(set(os.listdir(scratch)) - before)
        for name in written:
            data = (Path(scratch) / name).read_bytes()
            if len(data) > BIG:  # keep the repository small: big outputs are stored gzipped
                (target / "outputs" / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (target / "outputs" / name).write_bytes(data)
        meta: dict[str, object] = {
            "filename": case.filename,
            "answers": case.answers,
            "rc": done.returncode,
            "outputs": written,
        }
        (target / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return meta


def main() -> None:
    if not LEGACY.exists():
        sys.exit(f"{LEGACY} is missing: run `make .venv-openai028/.installed` first.")
    if EXPECTED.exists():
        shutil.rmtree(EXPECTED)
    for case in cases():
        meta = record(case)
        sys.stdout.write(f"{case.name}: rc={meta['rc']} outputs={meta['outputs']}\n")


if __name__ == "__main__":
    main()
