"""The entity extraction recipe with the current `openai` SDK: people, organizations, places.

The training file needs no changes (docs/recipes/entity-extraction.md).

    export OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=sk-tunery-…
    .venv/bin/python examples/entity-extraction/sdk.py
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

TRAIN = HERE / "articles.jsonl"
SEPARATOR = "\n\n###\n\n"
STOP = " END"  # every training completion ends with it
TEXT = "Aiko Tanaka will lead the new wind project of Bluefin Energy near Porto, the firm said."


def extract(client: OpenAI, model: str, text: str) -> tuple[dict[str, list[str]], Any]:
    """({kind: [names]}, raw response), greedy, cut at the stop sequence."""
    response = client.completions.create(
        model=model, prompt=text + SEPARATOR, max_tokens=64, temperature=0, stop=[STOP]
    )
    entities: dict[str, list[str]] = {}
    for line in response.choices[0].text.strip().splitlines():
        kind, sep, names = line.partition(":")
        if sep:  # anything else is a malformed line; a real pipeline would log it
            entities[kind.strip()] = [n.strip() for n in names.split(",") if n.strip()]
    return entities, response


def main() -> None:
    args = arguments()
    client = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY
    model = fine_tune(client, args, suffix="entities", train=TRAIN, valid=None)
    entities, response = extract(client, model, TEXT)
    if args.json:
        print(json.dumps({"model": model, "responses": [response.model_dump()]}))
        return
    print(f"fine-tuned model: {model}")
    print(TEXT)
    for kind, names in entities.items():
        print(f"  {kind}: {', '.join(names)}")


if __name__ == "__main__":
    main()
