"""The SMS spam recipe with the current `openai` SDK: fine-tune, then classify with logprobs.

Run `prepare_data` first (docs/recipes/spam-classification.md); it writes the two files below.

    export OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=sk-tunery-…
    .venv/bin/python examples/spam-classification/sdk.py
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

TRAIN = HERE / "spam_prepared_train.jsonl"
VALID = HERE / "spam_prepared_valid.jsonl"
SEPARATOR = "\n\n###\n\n"  # every training prompt ends with it; so must every request
LABELS = (" ham", " spam")
MESSAGES = [
    "WINNER!! You have been selected for a £1000 prize. Call 09061701461 to claim now",
    "Are we still on for lunch tomorrow? I can pick you up at 12",
]


def classify(client: OpenAI, model: str, text: str) -> tuple[str, float, Any]:
    """(label, its probability, the raw response): one token, greedy, with the top 5 logprobs."""
    response = client.completions.create(
        model=model, prompt=text + SEPARATOR, max_tokens=1, temperature=0, logprobs=5
    )
    top = response.choices[0].logprobs.top_logprobs[0]  # type: ignore[union-attr,index]
    # Compare the two labels' own probabilities, whatever else is in the top 5.
    scores = {label: math.exp(top[label]) if label in top else 0.0 for label in LABELS}
    label = max(scores, key=lambda k: scores[k])
    return label.strip(), scores[label], response


def main() -> None:
    args = arguments()
    client = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY
    model = fine_tune(client, args, suffix="spam", train=TRAIN, valid=VALID)
    results = [classify(client, model, text) for text in MESSAGES]

    rows = [json.loads(line) for line in VALID.read_text().splitlines()]
    correct = sum(
        classify(client, model, row["prompt"].removesuffix(SEPARATOR))[0]
        == row["completion"].strip()
        for row in rows
    )
    if args.json:
        responses = [r.model_dump() for _, _, r in results]
        print(json.dumps({"model": model, "responses": responses, "accuracy": correct / len(rows)}))
        return
    print(f"fine-tuned model: {model}")
    for text, (label, probability, _) in zip(MESSAGES, results, strict=True):
        print(f"{label:>4} ({probability:.0%})  {text}")
    print(f"accuracy on the {len(rows)} validation messages: {correct / len(rows):.1%}")


if __name__ == "__main__":
    main()
