"""Benchmark: Tunery's file validation against `openai tools fine_tunes.prepare_data -q` (0.28.1).

    .venv/bin/python bench/prepare_data/run.py [--rows 100000,1000000] [--repeat 3]

It generates JSONL inputs in bench/prepare_data/out/ (git-ignored) and runs each tool as its own
cold subprocess, so that the peak RSS reported by wait4() is that tool's alone: Tunery as
`python -m datasets.validation --json FILE` (the same checks and token counting as the upload
worker, without Django's app registry or the database), the legacy tool as
`openai tools fine_tunes.prepare_data -f FILE -q`. The legacy tool runs from the repository's
.venv-openai028 when `make test` has built it (requirements-openai028.txt: openai==0.28.1 with
pandas and openpyxl, the `datalib` extra), else from a venv this script makes in out/ with pip.
Runs alternate between the tools (and which goes first), so that both see the same background
load; the table gives the best run of each and the spread, and the load average at the time.
It prints a Markdown table (also saved as out/results-<rows>.json) for
docs/benchmarks/prepare_data.md.

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
from functools import partial
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
OUT = HERE / "out"
VENV028 = OUT / "venv-openai028"
REPO_VENV028 = REPO / ".venv-openai028"  # made by `make test` from the same requirements
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
    if (REPO_VENV028 / ".installed").exists() and (REPO_VENV028 / "bin" / "openai").exists():
        return REPO_VENV028 / "bin" / "openai"
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
    command = [sys.executable, "-m", "datasets.validation", "--json", str(path)]
    result = measure(command, cwd=REPO, env=env)
    if result["exit"] not in (0, 1):  # 1: the file has errors, as these inputs do
        raise RuntimeError(f"Tunery's validation failed:\n{result['output'][-2000:]}")
    out = json.loads(result["output"].strip().splitlines()[-1])
    stats = out["stats"]
    result["report"] = {
        "examples": stats.get("examples"),
        "errors": out["error_count"],
        "tokens": (stats.get("tokens") or {}).get("total"),
        "duplicates": (stats.get("duplicates") or {}).get("count"),
        "task_type": stats.get("task_type"),
        "tokenizer_s": out["seconds"]["tokenizer"],
        "validate_s": out["seconds"]["validation"],
    }
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
    walls = [r["wall_s"] for r in runs]
    return {
        "wall_best": min(walls),
        "wall_median": statistics.median(walls),
        "wall_max": max(walls),
        "wall_all": walls,
        "rss_mib": max(r["rss_mib"] for r in runs),
        "cpu_best": min(r["cpu_s"] for r in runs),
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
    args = parser.parse_args()

    OUT.mkdir(exist_ok=True)
    openai_bin = ensure_legacy_venv()
    # Warm-up: the first resolution of the default model converts its GGUF once (cached after).
    run_tunery(make_input(1000, "sms", args.source))
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        for kind in args.kinds.split(","):
            path = make_input(rows, kind, args.source)
            tunery: list[dict[str, Any]] = []
            legacy: list[dict[str, Any]] = []
            loads = []
            legacy_repeat = args.legacy_repeat or args.repeat
            # Alternating, and swapping which goes first, so that both tools see the same
            # background load on a shared machine.
            for i in range(max(args.repeat, legacy_repeat)):
                loads.append(os.getloadavg()[0])
                runs = [
                    (tunery, partial(run_tunery, path), i < args.repeat),
                    (legacy, partial(run_legacy, openai_bin, path), i < legacy_repeat),
                ]
                for into, run, wanted in runs if i % 2 == 0 else runs[::-1]:
                    if wanted:
                        into.append(run())
            loads.append(os.getloadavg()[0])
            t, lg = summarise(tunery), summarise(legacy)
            t["validate_best"] = min(r["report"]["validate_s"] for r in tunery)
            t["tokenizer_best"] = min(r["report"]["tokenizer_s"] for r in tunery)
            results.append(
                {
                    "rows": rows,
                    "kind": kind,
                    "bytes": path.stat().st_size,
                    "tunery": t,
                    "legacy": lg,
                    "speedup_best": round(lg["wall_best"] / t["wall_best"], 2),
                    "speedup_median": round(lg["wall_median"] / t["wall_median"], 2),
                    "speedup_cpu": round(lg["cpu_best"] / t["cpu_best"], 2),
                    "report": tunery[-1]["report"],
                    "load_min": round(min(loads), 2),
                    "load_max": round(max(loads), 2),
                }
            )
            print(json.dumps(results[-1]), flush=True)
    (OUT / f"results-{args.rows.replace(',', '-')}.json").write_text(
        json.dumps({"machine": machine(), "results": results}, indent=2)
    )
    print(f"\nMachine: {machine()}\n")
    print(
        "| input | rows | size | runs | Tunery wall: best (range) | of which validation "
        "| Tunery CPU | Tunery peak RSS | 0.28 wall: best (range) | 0.28 CPU | 0.28 peak RSS "
        "| speed-up: best / median / CPU | tokens counted | load avg |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        t, lg, rep = r["tunery"], r["legacy"], r["report"]
        print(
            f"| {r['kind']} | {r['rows']:,} | {r['bytes'] / 2**20:.0f} MiB "
            f"| {len(t['wall_all'])} + {len(lg['wall_all'])} "
            f"| {t['wall_best']:.2f} s ({t['wall_best']:.2f}–{t['wall_max']:.2f}) "
            f"| {t['validate_best']:.2f} s | {t['cpu_best']:.1f} s | {t['rss_mib']:.0f} MiB "
            f"| {lg['wall_best']:.2f} s ({lg['wall_best']:.2f}–{lg['wall_max']:.2f}) "
            f"| {lg['cpu_best']:.1f} s | {lg['rss_mib']:.0f} MiB "
            f"| {r['speedup_best']:.2f}x / {r['speedup_median']:.2f}x / {r['speedup_cpu']:.2f}x "
            f"| {rep['tokens']:,} | {r['load_min']:.1f}–{r['load_max']:.1f} |"
        )


def make_input(rows: int, kind: str, source: Path) -> Path:
    path = OUT / f"{kind}-{rows}.jsonl"
    if not path.exists():
        generate(path, rows, unique=kind == "unique", source=source)
    return path


if __name__ == "__main__":
    main()
