"""The support chatbot recipe with the current `openai` SDK: chat fine-tuning, chat replies.

The training file is chat data (`messages`) and needs no changes (docs/recipes/support-chatbot.md).

    export OPENAI_BASE_URL=http://127.0.0.1:8000/v1 OPENAI_API_KEY=sk-tunery-…
    .venv/bin/python examples/support-chatbot/sdk.py
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

TRAIN = HERE / "conversations.jsonl"
# The system message carries what the agent must know about this customer, as in training.
SYSTEM = (
    "You are the support assistant of Northwind Internet. Answer in one or two friendly "
    "sentences. Customer: Ben. Plan: Fiber 1000. Router: NW-500."
)
QUESTION = "Hello, my router shows a blinking red light."


def reply(client: OpenAI, model: str, question: str) -> Any:
    return client.chat.completions.create(
        model=model,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        max_tokens=80,
        temperature=0,
    )


def main() -> None:
    args = arguments()
    client = OpenAI()  # reads OPENAI_BASE_URL and OPENAI_API_KEY
    model = fine_tune(client, args, suffix="support", train=TRAIN, valid=None)
    response = reply(client, model, QUESTION)
    if args.json:
        print(json.dumps({"model": model, "responses": [response.model_dump()]}))
        return
    print(f"fine-tuned model: {model}")
    print(f"customer: {QUESTION}")
    print(f"agent:    {response.choices[0].message.content}")


if __name__ == "__main__":
    main()
