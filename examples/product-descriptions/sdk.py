"""The product descriptions recipe with the current `openai` SDK: attributes in, copy out.

Run `prepare_data` first (docs/recipes/product-descriptions.md); it writes the file below.

    export OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=sk-tunery-…
    .venv/bin/python examples/product-descriptions/sdk.py
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

TRAIN = HERE / "attributes_prepared.jsonl"
SEPARATOR = " ->"  # the separator prepare_data added to every prompt
ATTRIBUTES = "Item=scarf, Color=burgundy, Price=$29, Size=M, Material=wool"


def describe(client: OpenAI, model: str, attributes: str) -> Any:
    # No stop sequence: the descriptions have several sentences, so "." (prepare_data's
    # suggestion) would cut them short; the model ends them itself (finish_reason "stop").
    return client.completions.create(
        model=model, prompt=attributes + SEPARATOR, max_tokens=60, temperature=0
    )


def main() -> None:
    args = arguments()
    client = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY
    model = fine_tune(client, args, suffix="products", train=TRAIN, valid=None)
    response = describe(client, model, ATTRIBUTES)
    if args.json:
        print(json.dumps({"model": model, "responses": [response.model_dump()]}))
        return
    print(f"fine-tuned model: {model}")
    print(ATTRIBUTES)
    print(f"  {response.choices[0].text.strip()}  [{response.choices[0].finish_reason}]")


if __name__ == "__main__":
    main()
