"""What one evaluation of the free-text generation metric costs (docs/adr/0018), and where.

Builds the generation sample exactly as training does (the task's validation file in the run's
fixed order, `setup_free_text`) on the embedded base or a trained model (`--model-dir`, e.g. a
checkpoint's `model/` directory), then in alternating rounds times `free_text.score` as shipped
against the plan it replaced (every row given the budget of the sample's longest reference).
Per plan it reports seconds, model forward calls, the tokens generated and the
mean ROUGE-L, which must agree where no row reaches a budget.

    .venv/bin/python bench/quality/generation_cost.py --task docstring_summary [--size 100]
        [--model-dir DIR] [--rounds 2] [--threads N] [--json F]

The task data comes from `bench/quality/tasks.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import machine  # noqa: E402
from engine import (  # noqa: E402
    DEFAULT_MODEL_SOURCE,
    Hooks,
    TrainSpec,
    free_text,
    resolve_model_source,
)
from engine.models import auto_threads, default_cache_dir, pick_device  # noqa: E402
from engine.trainer import Trainer, build_runtime, setup_free_text, validation_order  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"


def baseline_greedy(model: Any, work: free_text.FreeText, autocast: Any) -> list[list[int]]:
    """The plan before: every row of a batch had the budget of the sample's longest reference,
    so one row that ran on kept its whole batch decoding."""
    longest = max(work.budgets)
    return free_text.greedy(model, replace(work, budgets=[longest] * len(work.budgets)), autocast)


@contextmanager
def counting_forwards(model: Any) -> Iterator[list[int]]:
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    calls = [0]

    def hook(*_: Any) -> None:
        calls[0] += 1

    handle = causal_lm.register_forward_hook(hook)
    try:
        yield calls
    finally:
        handle.remove()


def measure(plan: str, runtime: Any, work: free_text.FreeText) -> dict[str, Any]:
    greedy = baseline_greedy if plan == "baseline" else free_text.greedy
    with counting_forwards(runtime.model) as calls:
        started = time.perf_counter()
        generations = greedy(runtime.model, work, runtime.autocast)
        seconds = time.perf_counter() - started
    texts = [runtime.tokenizer.decode(g, skip_special_tokens=True) for g in generations]
    rouge = statistics.fmean(
        free_text.rouge_l(ref, text) for ref, text in zip(work.references, texts, strict=True)
    )
    return {
        "plan": plan,
        "seconds": round(seconds, 2),
        "forwards": calls[0],
        "generated_tokens": sum(len(g) for g in generations),
        "rouge_l": round(rouge, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="docstring_summary")
    parser.add_argument("--size", type=int, default=100, help="the training file (its labels)")
    parser.add_argument("--model-dir", help="a trained adapter or full model; default the base")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    torch.set_num_threads(args.threads or auto_threads())
    directory = DATA / args.task
    spec = TrainSpec(
        model_source=DEFAULT_MODEL_SOURCE,
        train_path=str(directory / f"train_{args.size}.jsonl"),
        validation_path=str(directory / "valid.jsonl"),
        output_dir=str(REPO / "var" / "bench-generation-cost"),
        cache_dir=str(default_cache_dir()),
        continue_from=args.model_dir,
    )
    device = pick_device(spec.device)
    base_dir = resolve_model_source(spec.model_source, spec.cache_dir)
    hooks = Hooks()
    trainer = Trainer(spec, hooks)
    trainer.runtime = runtime = build_runtime(trainer.spec, base_dir, device, None)
    trainer._load_data(runtime.tokenizer, base_dir)
    examples = trainer.validation_examples
    order = validation_order(spec.seed, len(examples))
    work = setup_free_text(runtime, trainer.tokenizing, [examples[i] for i in order], hooks)
    if work is None:
        raise SystemExit(f"{args.task}: no validation example has a reference")
    runtime.model.eval()
    free_text.greedy(runtime.model, replace(work, prompts=work.prompts[:2]), runtime.autocast)

    rounds = []
    for n in range(args.rounds):
        plans = ("baseline", "shipped") if n % 2 == 0 else ("shipped", "baseline")
        for plan in plans:
            result = measure(plan, runtime, work)
            rounds.append({"round": n, **result})
            print(json.dumps(rounds[-1]), flush=True)
    summary = {
        plan: statistics.median(r["seconds"] for r in rounds if r["plan"] == plan)
        for plan in ("baseline", "shipped")
    }
    report = {
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "task": args.task,
        "model": args.model_dir or "base",
        "prompts": len(work.prompts),
        "max_new_tokens": max(work.budgets),
        "rounds": rounds,
        "median_seconds": summary,
        "speedup": round(summary["baseline"] / summary["shipped"], 2),
    }
    print(json.dumps({k: v for k, v in report.items() if k != "rounds"}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
