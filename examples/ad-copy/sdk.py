"""The ad copy recipe with the current `openai` SDK: three ads for one product description.

The training file needs no changes (docs/recipes/ad-copy.md shows prepare_data's verdict).

    export OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=sk-tunery-…
    .venv/bin/python examples/ad-copy/sdk.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from openai import OpenAI

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # examples/recipe.py, shared by the recipes

from recipe import arguments, fine_tune  # noqa: E402

TRAIN = HERE / "products.jsonl"
SEPARATOR = "\n\n###\n\n"
STOP = " END"  # every training completion ends with it
PRODUCT = (
    "Lumen Bike Light\nLumen Bike Light is a rechargeable bike light with a 300 lumen beam. "
    "Warranty: 2 years"
)


def ads(client: OpenAI, model: str, description: str, n: int) -> Any:
    """n candidate ads (sampled, so they differ); each ends before " END"."""
    return client.completions.create(
        model=model,
        prompt=description + SEPARATOR,
        max_tokens=60,
        temperature=0.8,
        n=n,
        stop=[STOP],
    )


def main() -> None:
    args = arguments()
    client = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY
    model = fine_tune(client, args, suffix="ads", train=TRAIN, valid=None)
    response = ads(client, model, PRODUCT, n=3)
    if args.json:
        print(json.dumps({"model": model, "responses": [response.model_dump()]}))
        return
    print(f"fine-tuned model: {model}")
    for choice in response.choices:
        print(f"- {choice.text.strip()}  [{choice.finish_reason}]")


if __name__ == "__main__":
    main()
