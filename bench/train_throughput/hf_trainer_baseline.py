#!/usr/bin/env python3
"""Reference baseline: what a user would write with plain Hugging Face tools.

Tunery's copy of ../shared/bench/hf_trainer_baseline.py with two switches a user tuning the
Trainer would turn on (issue 14 item 4); without them it is the shared script unchanged:
  --bf16     TrainingArguments(bf16=True): bf16 autocast (worth it only where bf16 is native)
  --flatten  DataCollatorWithFlattening: the batch's examples concatenated into one row with
             position ids restarting per example, so no padding is computed


A LoRA fine-tune of a causal LM on a prompt/completion JSONL file with
transformers.Trainer + peft, in the documented default way: loss on the
completion only, dynamic padding to the longest example of each batch, the
Trainer's default precision for the device (fp32 on CPU), no packing.

It prints one JSON line: examples, epochs, steps, train_tokens (non-pad tokens
seen, counted over all epochs), seconds (training only, model loading excluded),
tokens_per_second, final_loss.

  python hf_trainer_baseline.py --model DIR --train FILE.jsonl \
      [--epochs 1] [--batch-size 8] [--lr 2e-4] [--max-examples N] [--threads N]

DIR is a Hugging Face model directory (config.json + safetensors + tokenizer).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    DataCollatorForSeq2Seq,
    DataCollatorWithFlattening,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--max-examples", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=None, help="Trainer output dir (default: a temp dir)")
    ap.add_argument("--bf16", action="store_true", help="TrainingArguments(bf16=True)")
    ap.add_argument("--flatten", action="store_true", help="DataCollatorWithFlattening")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tok = AutoTokenizer.from_pretrained(args.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    text = Path(args.train).read_text(encoding="utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    if args.max_examples:
        rows = rows[: args.max_examples]

    feats = []
    for r in rows:
        p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
        c = tok(r["completion"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        feats.append(
            {
                "input_ids": p + c,
                "attention_mask": [1] * (len(p) + len(c)),
                "labels": [-100] * len(p) + c,
            }
        )

    base = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model = get_peft_model(
        base,
        LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM", target_modules="all-linear"
        ),
    )

    class Clock(TrainerCallback):
        start = end = 0.0

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            Clock.start = time.perf_counter()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            Clock.end = time.perf_counter()

    targs = TrainingArguments(
        output_dir=args.out or tempfile.mkdtemp(prefix="hf-baseline-"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        logging_steps=10,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        disable_tqdm=True,
        bf16=args.bf16,
    )
    collator: Any = DataCollatorForSeq2Seq(tok, padding=True)
    if args.flatten:
        collator = DataCollatorWithFlattening()  # type: ignore[no-untyped-call]  # transformers: untyped
    trainer = Trainer(
        model=model, args=targs, train_dataset=feats, data_collator=collator, callbacks=[Clock()]
    )
    out = trainer.train()
    secs = Clock.end - Clock.start
    tokens = sum(len(f["input_ids"]) for f in feats) * args.epochs
    print(
        json.dumps(
            {
                "examples": len(feats),
                "epochs": args.epochs,
                "steps": out.global_step,
                "train_tokens": int(tokens),
                "seconds": round(secs, 2),
                "tokens_per_second": round(tokens / secs, 1),
                "final_loss": round(out.training_loss, 4),
            }
        )
    )


if __name__ == "__main__":
    main()
