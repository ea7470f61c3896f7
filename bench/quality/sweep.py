"""Issue 14's sweep: the quality suite's tasks × training sizes × hyperparameter rules.

Each run goes through Tunery's own job path (bench/quality/suite.py: upload, create the job,
a real Celery worker trains, the inference service generates, the test split is scored), all in
one worker and one inference service. A rule is a name from `engine.spec.AUTO_RULES` ("openai":
OpenAI's published rules; "small": the candidate for small open models), optionally with
overrides, e.g. `small:learning_rate_multiplier=0.5`; the sweep resolves it to explicit values
with `engine.resolve_hyperparameters`, so it measures exactly what "auto" would train with.
The LoRA shape and warm-up are the base model's settings (`lora_rank`, `lora_alpha`,
`lora_target_modules` with `+` between names, `warmup_ratio`), set for the run:
`small:lora_rank=16`, `small:lora_target_modules=q_proj+v_proj`.
Runs are appended to a JSON-lines file as they finish and skipped when already there, so an
interrupted sweep continues where it stopped.

    .venv/bin/python bench/quality/sweep.py --sizes 100 --rule openai --rule small \\
        --zero-shot --test-limit 100 --out sweep.jsonl
    .venv/bin/python bench/quality/sweep.py --table sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from django.conf import settings  # noqa: E402

from bench.common import machine  # noqa: E402
from bench.quality.suite import (  # noqa: E402  (suite.py sets Django up)
    DATA,
    parse_early,
    read_test,
    score_model,
    stack,
    train_and_score,
    uptime,
)
from bench.quality.tasks import TASKS  # noqa: E402
from engine import resolve_hyperparameters  # noqa: E402

HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
# The base model's training shape (set in the admin; jobs.runner.base_model_shape), swept by
# setting it on the base model for the run and putting it back afterwards.
BASE_MODEL_FIELDS = ("lora_rank", "lora_alpha", "lora_target_modules", "warmup_ratio")


def parse_rule(text: str) -> tuple[str, dict[str, str]]:
    """ "small:learning_rate_multiplier=0.5;n_epochs=3;lora_rank=16" → ("small", {...})."""
    name, _, rest = text.partition(":")
    overrides: dict[str, str] = {}
    for item in filter(None, rest.split(";")):
        key, _, value = item.partition("=")
        if key not in HYPERPARAMETERS + BASE_MODEL_FIELDS:
            raise SystemExit(f"Unknown setting {key!r} in rule {text!r}")
        overrides[key] = value
    return name, overrides


def resolved(rule: str, n_examples: int, selecting: bool) -> dict[str, Any]:
    """The values "auto" would train with under `rule` (the job gets them explicitly);
    `selecting`: the job keeps its best checkpoint, as one with early stopping does."""
    name, overrides = parse_rule(rule)
    epochs, batch, multiplier = resolve_hyperparameters(
        n_examples,
        int(overrides["n_epochs"]) if "n_epochs" in overrides else None,
        int(overrides["batch_size"]) if "batch_size" in overrides else None,
        float(overrides["learning_rate_multiplier"])
        if "learning_rate_multiplier" in overrides
        else None,
        rule=name,
        selecting=selecting,
    )
    return {"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": multiplier}


@contextmanager
def rule_on_base_model(model: str, rule: str) -> Iterator[dict[str, Any]]:
    """The rule's LoRA and warm-up settings on the base model for one run (the engine's
    defaults for those it does not name); the model's own settings again afterwards."""
    from models_app.models import BaseModel

    _, overrides = parse_rule(rule)
    shape: dict[str, Any] = {
        "lora_rank": int(overrides["lora_rank"]) if "lora_rank" in overrides else None,
        "lora_alpha": int(overrides["lora_alpha"]) if "lora_alpha" in overrides else None,
        "lora_target_modules": overrides.get("lora_target_modules", "").replace("+", ","),
        "warmup_ratio": float(overrides["warmup_ratio"]) if "warmup_ratio" in overrides else None,
    }
    base = BaseModel.objects.get(name=model)
    saved = {field: getattr(base, field) for field in BASE_MODEL_FIELDS}
    BaseModel.objects.filter(pk=base.pk).update(**shape)
    try:
        yield {key: value for key, value in shape.items() if value not in (None, "")}
    finally:
        BaseModel.objects.filter(pk=base.pk).update(**saved)


def count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def done(out: Path) -> list[dict[str, Any]]:
    if not out.exists():
        return []
    return [json.loads(line) for line in out.read_text().splitlines() if line.strip()]


def sweep(args: argparse.Namespace) -> None:
    rows = done(args.out)
    have = {(r["task"], r["size"], r["rule"], r["early_stopping"], r.get("seed", 0)) for r in rows}
    early = parse_early(args.early_stopping)
    tasks = args.tasks or sorted(TASKS)

    def append(row: dict[str, Any]) -> None:
        row |= {"machine": machine(), "uptime_after": uptime()}
        with args.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    with stack(Path(settings.DATA_DIR) / "bench-quality") as client:
        for task in tasks:
            kind, metric = TASKS[task][0], TASKS[task][1]
            test = read_test(task, args.test_limit)
            if args.zero_shot and (task, 0, "zero-shot", False, 0) not in have:
                scores, seconds, _ = score_model(client, args.model, kind, test)
                append(
                    {
                        "task": task,
                        "size": 0,
                        "rule": "zero-shot",
                        "early_stopping": False,
                        "metric": metric,
                        "score": scores[metric],
                        "scores": scores,
                        "test_examples": len(test),
                        "scoring_seconds": seconds,
                    }
                )
            for size in args.sizes:
                n = count_lines(DATA / task / f"train_{size}.jsonl")
                for rule in args.rule:
                    if (task, size, rule, early, args.seed) in have:
                        continue
                    hyperparameters = resolved(rule, n, selecting=early is not False)
                    started = time.perf_counter()
                    with rule_on_base_model(args.model, rule) as shape:
                        summary = train_and_score(
                            client,
                            task=task,
                            size=size,
                            model=args.model,
                            early=early,
                            seed=args.seed,
                            hyperparameters=hyperparameters,
                            test=test,
                        )
                    append(
                        {
                            "task": task,
                            "size": size,
                            "train_examples": n,
                            "rule": rule,
                            "early_stopping": early,
                            "seed": args.seed,
                            "metric": metric,
                            "score": summary.get("fine_tuned", {}).get(metric),
                            "test_examples": len(test),
                            "total_seconds": round(time.perf_counter() - started, 1),
                            "base_model_shape": shape,
                            **summary,
                        }
                    )


def table(path: Path) -> str:
    """Markdown: one row per task and size, one column per rule (× early stopping); a cell run
    with several seeds shows their mean, and the seeds' scores under it."""
    rows = done(path)
    columns: list[str] = []
    runs: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for row in rows:
        column = row["rule"] + (" + best ckpt" if row["early_stopping"] not in (False,) else "")
        if row["rule"] == "zero-shot":
            column = "base zero-shot"
        if column not in columns:
            columns.append(column)
        for size in [row["size"]] if row["size"] else sorted({r["size"] for r in rows} - {0}):
            runs.setdefault((row["task"], size, column), []).append(row)
    cells: dict[tuple[str, int], dict[str, str]] = {}
    scores: dict[str, dict[str, float]] = {}
    for (task, size, column), cell_rows in runs.items():
        values = [100 * r["score"] for r in cell_rows if r.get("score") is not None]
        text = "failed" if not values else f"{statistics.fmean(values):.1f}"
        if values:
            scores.setdefault(column, {})[f"{task}/{size}"] = statistics.fmean(values)
        if len(values) > 1:
            text += f" <sub>{len(values)} seeds: {', '.join(f'{v:.1f}' for v in values)}</sub>"
        first = cell_rows[0]
        if first["rule"] != "zero-shot" and values:
            hp = first["hyperparameters"]
            minutes = statistics.fmean(r.get("job_seconds", 0) for r in cell_rows) / 60
            text += (
                f" <sub>e{hp['n_epochs']} b{hp['batch_size']} "
                f"×{hp['learning_rate_multiplier']:g}, {minutes:.1f} min</sub>"
            )
        cells.setdefault((task, size), {})[column] = text
    lines = [
        "| task | size | " + " | ".join(columns) + " |",
        "| --- | --- |" + " --- |" * len(columns),
    ]
    for (task, size), by_column in sorted(cells.items()):
        metric = TASKS[task][1]
        lines.append(
            f"| {task} ({metric}) | {size} | "
            + " | ".join(by_column.get(c, "") for c in columns)
            + " |"
        )
    # The mean over the task/size cells every column has.
    common = set.intersection(*(set(s) for s in scores.values())) if scores else set()
    if common:
        lines.append(
            f"| **mean of {len(common)}** | | "
            + " | ".join(
                f"**{statistics.fmean(scores[c][k] for k in common):.1f}**" if c in scores else ""
                for c in columns
            )
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="*", choices=sorted(TASKS), default=None)
    parser.add_argument("--sizes", nargs="*", type=int, default=[100], choices=(100, 500, 2000))
    parser.add_argument("--rule", action="append", default=None, help="repeatable")
    parser.add_argument("--model", default="SmolLM2-135M-Instruct")
    parser.add_argument("--early-stopping", default="false")
    parser.add_argument("--zero-shot", action="store_true", help="score the base model too")
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("sweep.jsonl"))
    parser.add_argument("--table", type=Path, default=None, help="print a results table")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    args.rule = args.rule or ["openai", "small"]
    sweep(args)


if __name__ == "__main__":
    main()
