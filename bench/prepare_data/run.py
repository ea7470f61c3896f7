"""Benchmark: Tunery's file validation against `openai tools fine_tunes.prepare_data -q` (0.28.1).

    .venv/bin/python bench/prepare_data/run.py [--rows 100000,1000000] [--repeat 3]

It generates JSONL inputs in bench/prepare_data/out/ (git-ignored), makes a separate venv there
with openai==0.28.1 + pandas + openpyxl (the legacy tool's `datalib` extra), then runs each tool
as its own subprocess, so that the peak RSS reported by wait4() is that tool's alone, and prints a
Markdown table (also saved as out/results-<rows>.json) for docs/benchmarks/prepare_data.md.

Inputs are built from the SMS spam rows in shared/data/sms_spam/all.jsonl, two ways:
* `sms`: rows cycle through the 5,160 messages, as in the issue's 0.28 measurement. Exact repeats
  let Tunery's count cache tokenize each distinct string once, so this is the easy case.
* `unique`: every prompt gets its own `#<n> ` prefix, so no string repeats and every row is
  tokenized: the honest worst case for token counting.
Both contain some bad rows the legacy tool can also read (0.1% empty completions, 0.1% extra keys,
0.05% missing completions); rows that aren't JSON at all would stop pandas before it did any work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import venv
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "out"
VENV028 = OUT / "venv-openai028"
SOURCE = REPO.parent / "shared" / "data" / "sms_spam" / "all.jsonl"
# The legacy tool with its `datalib` extra, pinned as in requirements-openai028.txt.
LEGACY_REQUIREMENTS = REPO / "requirements-openai028.txt"


# --- inputs ------------------------------------------------------------------------------------


def generate(path: Path, rows: int, *, unique: bool, source: Path) -> None:
    with open(source, encoding="utf-8") as fh:
        sms = [json.loads(line) for line in fh if line.strip()]
    with open(path, "w", encoding="utf-8") as out:
        for i in range(rows):
            row: dict[str, Any] = dict(sms[i % len(sms)])
            if unique:
                row["prompt"] = f"#{i} {row['prompt']}"
            if i % 1000 == 7:
                row["completion"] = ""
            elif i % 1000 == 507:
                row["id"] = i
            elif i % 2000 == 999:
                del row["completion"]
            out.write(json.dumps(row, ensure_ascii=False) + "\n")


# --- the tools ---------------------------------------------------------------------------------


def ensure_legacy_venv() -> Path:
    openai_bin = VENV028 / "bin" / "openai"
    if not openai_bin.exists():
        print(f"creating {VENV028} (openai==0.28.1, pandas, openpyxl)", flush=True)
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV028)
        pip = [str(VENV028 / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "-r", str(LEGACY_REQUIREMENTS)], check=True)
    return openai_bin


def measure(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Wall seconds, peak RSS (MiB) and CPU seconds of one subprocess, from wait4()."""
    start = time.perf_counter()
    process = subprocess.Popen(
        args,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return {
        "wall_s": round(wall, 2),
        "rss_mib": round(usage.ru_maxrss / 1024, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
        "exit": process.returncode,
        "output": output.decode(errors="replace"),
    }


def run_tunery(path: Path) -> dict[str, Any]:
    env = os.environ | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = measure(
        [sys.executable, str(Path(__file__)), "--validate", str(path)], cwd=REPO, env=env
    )
    if result["exit"] != 0:
        raise RuntimeError(f"Tunery's validation failed:\n{result['output']}")
    result["report"] = json.loads(result["output"].strip().splitlines()[-1])
    return result


def run_legacy(openai_bin: Path, path: Path) -> dict[str, Any]:
    work = OUT / "legacy-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # The tool writes <stem>_prepared*.jsonl next to its input: give it a private copy's folder.
    copy = work / path.name
    os.link(path, copy)
    result = measure(
        [str(openai_bin), "tools", "fine_tunes.prepare_data", "-f", copy.name, "-q"], cwd=work
    )
    shutil.rmtree(work, ignore_errors=True)
    if result["exit"] != 0:
        raise RuntimeError(f"prepare_data failed:\n{result['output'][-2000:]}")
    return result


def validate_main(path: str) -> None:
    """The measured Tunery side: Django settings, the default tokenizer, one validation pass.

    Prints the phases' times too: a Celery worker pays `setup_s` and `tokenizer_s` once per
    process, so `validate_s` is what each further file costs it.
    """
    started = time.perf_counter()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from datasets import processing, tokens

    setup = time.perf_counter()
    counter = tokens.get_counter()
    loaded = time.perf_counter()
    report = processing.validate_path(path, counter=counter)
    done = time.perf_counter()
    stats = report.stats
    print(
        json.dumps(
            {
                "examples": stats.get("examples"),
                "errors": report.error_count,
                "tokens": (stats.get("tokens") or {}).get("total"),
                "duplicates": (stats.get("duplicates") or {}).get("count"),
                "task_type": stats.get("task_type"),
                "setup_s": round(setup - started, 2),
                "tokenizer_s": round(loaded - setup, 2),
                "validate_s": round(done - loaded, 2),
            }
        )
    )


# --- reporting ---------------------------------------------------------------------------------


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    cpus = f"{os.cpu_count()} CPUs{memory}"
    return f"{model or platform.processor()}, {cpus}, Python {platform.python_version()}"


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "wall_s": statistics.median(r["wall_s"] for r in runs),
        "wall_all": [r["wall_s"] for r in runs],
        "rss_mib": max(r["rss_mib"] for r in runs),
        "cpu_s": statistics.median(r["cpu_s"] for r in runs),
        "cpu_all": [r["cpu_s"] for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--kinds", default="sms,unique")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--legacy-repeat", type=int, default=None, help="defaults to --repeat")
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--validate", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.validate:
        validate_main(args.validate)
        return

    OUT.mkdir(exist_ok=True)
    openai_bin = ensure_legacy_venv()
    # Warm-up: the first resolution of the default model converts its GGUF once (cached after).
    run_tunery(make_input(1000, "sms", args.source))
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        for kind in args.kinds.split(","):
            path = make_input(rows, kind, args.source)
            tunery, legacy, loads = [], [], []
            # Interleaved, so that both tools see the same background load on a shared machine.
            for i in range(max(args.repeat, args.legacy_repeat or args.repeat)):
                loads.append(os.getloadavg()[0])
                if i < args.repeat:
                    tunery.append(run_tunery(path))
                if i < (args.legacy_repeat or args.repeat):
                    legacy.append(run_legacy(openai_bin, path))
            t, lg = summarise(tunery), summarise(legacy)
            t["validate_s"] = statistics.median(r["report"]["validate_s"] for r in tunery)
            results.append(
                {
                    "rows": rows,
                    "kind": kind,
                    "bytes": path.stat().st_size,
                    "tunery": t,
                    "legacy": lg,
                    "speedup": round(lg["wall_s"] / t["wall_s"], 2),
                    "speedup_warm": round(lg["wall_s"] / t["validate_s"], 2),
                    "report": tunery[-1]["report"],
                    "load_average": round(statistics.mean(loads), 2),
                }
            )
            print(json.dumps(results[-1]), flush=True)
    (OUT / f"results-{args.rows.replace(',', '-')}.json").write_text(
        json.dumps({"machine": machine(), "results": results}, indent=2)
    )
    print(f"\nMachine: {machine()}\n")
    print(
        "| input | rows | size | Tunery wall (cold process) | of which validation | Tunery CPU "
        "| Tunery peak RSS | 0.28 wall | 0.28 CPU | 0.28 peak RSS | speed-up (cold) "
        "| speed-up (warm worker) | tokens counted | load avg |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        t, lg, rep = r["tunery"], r["legacy"], r["report"]
        print(
            f"| {r['kind']} | {r['rows']:,} | {r['bytes'] / 2**20:.0f} MiB | {t['wall_s']:.2f} s | "
            f"{t['validate_s']:.2f} s | {t['cpu_s']:.1f} s | {t['rss_mib']:.0f} MiB | "
            f"{lg['wall_s']:.2f} s | {lg['cpu_s']:.1f} s | {lg['rss_mib']:.0f} MiB | "
            f"{r['speedup']:.2f}x | {r['speedup_warm']:.2f}x | {rep['tokens']:,} | "
            f"{r['load_average']:.1f} |"
        )


def make_input(rows: int, kind: str, source: Path) -> Path:
    path = OUT / f"{kind}-{rows}.jsonl"
    if not path.exists():
        generate(path, rows, unique=kind == "unique", source=source)
    return path


if __name__ == "__main__":
    main()
