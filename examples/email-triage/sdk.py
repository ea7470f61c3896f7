"""The email triage recipe with the current `openai` SDK: one of four categories per email.

Run `prepare_data` first (docs/recipes/email-triage.md); it writes the two files below.

    export OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=sk-tunery-…
    .venv/bin/python examples/email-triage/sdk.py
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from openai import OpenAI

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # examples/recipe.py, shared by the recipes

from recipe import arguments, fine_tune  # noqa: E402

TRAIN = HERE / "emails_prepared_train.jsonl"
VALID = HERE / "emails_prepared_valid.jsonl"
SEPARATOR = "\n\n###\n\n"
CATEGORIES = (" billing", " shipping", " sales", " technical")
EMAIL = {
    "subject": "Parcel never arrived",
    "from": "Rosa Jimenez",
    "date": "2024-06-03",
    "content": "Order 55120 should have come last Friday. Can you check where it is? Thanks, Rosa",
}


def prompt_of(email: dict[str, str]) -> str:
    # The training prompts' layout, then the separator prepare_data added.
    return (
        f"Subject: {email['subject']}\nFrom: {email['from']}\nDate: {email['date']}\n"
        f"Content: {email['content']}{SEPARATOR}"
    )


def triage(client: OpenAI, model: str, prompt: str) -> tuple[str, dict[str, float], Any]:
    """(category, P per category, raw response): one token, the top 5 logprobs."""
    response = client.completions.create(
        model=model, prompt=prompt, max_tokens=1, temperature=0, logprobs=5
    )
    top = response.choices[0].logprobs.top_logprobs[0]  # type: ignore[union-attr,index]
    scores = {c.strip(): math.exp(top[c]) if c in top else 0.0 for c in CATEGORIES}
    return max(scores, key=lambda c: scores[c]), scores, response


def main() -> None:
    args = arguments()
    client = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY
    model = fine_tune(client, args, suffix="triage", train=TRAIN, valid=VALID)
    category, scores, response = triage(client, model, prompt_of(EMAIL))

    rows = [json.loads(line) for line in VALID.read_text().splitlines()]
    correct = sum(
        triage(client, model, row["prompt"])[0] == row["completion"].strip() for row in rows
    )
    if args.json:
        print(
            json.dumps(
                {
                    "model": model,
                    "responses": [response.model_dump()],
                    "accuracy": correct / len(rows),
                }
            )
        )
        return
    print(f"fine-tuned model: {model}")
    print(
        f"{EMAIL['subject']!r} -> {category}  "
        + ", ".join(f"{c} {p:.2f}" for c, p in scores.items())
    )
    print(f"accuracy on the {len(rows)} validation emails: {correct / len(rows):.1%}")


if __name__ == "__main__":
    main()
