"""The sentiment recipe with the current `openai` SDK: a classifier whose logprobs are a score.

Run `prepare_data` first (docs/recipes/sentiment.md); it writes the two files below.

    export OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=sk-tunery-…
    .venv/bin/python examples/sentiment/sdk.py
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

TRAIN = HERE / "tweets_prepared_train.jsonl"
VALID = HERE / "tweets_prepared_valid.jsonl"
SEPARATOR = " ->"  # the separator prepare_data added to every prompt
TWEETS = [
    "Just tried the new espresso bar downtown and it was fantastic",
    "My package arrived broken and nobody answers the phone",
]


def sentiment(client: OpenAI, model: str, text: str) -> tuple[float, Any]:
    """(P(positive) among the two labels, the raw response): one token with the top 5 logprobs.

    The probability of " positive" against " negative" is a confidence score: threshold it
    where precision matters to you instead of taking whichever label came first.
    """
    response = client.completions.create(
        model=model, prompt=text + SEPARATOR, max_tokens=1, temperature=0, logprobs=5
    )
    top = response.choices[0].logprobs.top_logprobs[0]  # type: ignore[union-attr,index]
    positive = math.exp(top.get(" positive", -math.inf))
    negative = math.exp(top.get(" negative", -math.inf))
    score = positive / (positive + negative) if positive + negative > 0 else 0.5
    return score, response


def main() -> None:
    args = arguments()
    client = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY
    model = fine_tune(client, args, suffix="sentiment", train=TRAIN, valid=VALID)
    results = [sentiment(client, model, text) for text in TWEETS]

    rows = [json.loads(line) for line in VALID.read_text().splitlines()]
    correct = 0
    for row in rows:
        score, _ = sentiment(client, model, row["prompt"].removesuffix(SEPARATOR))
        correct += (score >= 0.5) == (row["completion"] == " positive")
    if args.json:
        responses = [r.model_dump() for _, r in results]
        print(json.dumps({"model": model, "responses": responses, "accuracy": correct / len(rows)}))
        return
    print(f"fine-tuned model: {model}")
    for text, (score, _) in zip(TWEETS, results, strict=True):
        print(f"P(positive) = {score:.2f}  {text}")
    print(f"accuracy on the {len(rows)} validation tweets: {correct / len(rows):.1%}")


if __name__ == "__main__":
    main()
