"""The prepare-data findings in the product's own words, for the dataset page.

`datasets.prepare` keeps the legacy CLI's wording (the 0.28 tool's, checked line by line by the
parity tests): row positions counted from 0, "There are 1 duplicated…", model names like `ada`,
`--flags`. The page numbers rows by their line in the file (as the validation errors do), counts
grammatically, and speaks of Tunery's forms and links."""

from __future__ import annotations

import re
from typing import Any

ROWS = re.compile(r"\s*These are (rows|lines): \[[^\]]*\]")


def plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count:,} {one if count == 1 else (many or one + 's')}"


def web_message(finding: dict[str, Any]) -> str:
    """A finding's message for the browser; the line numbers are shown beside it."""
    n = int(finding.get("row_count") or 0)
    fid = finding["id"]
    if fid == "duplicates":
        return (
            f"{plural(n, 'example is a duplicate', 'examples are duplicates')} of an earlier one."
        )
    if fid == "long_examples":
        return (
            f"{plural(n, 'example is', 'examples are')} very long (over 10,000 characters); "
            "they may be cut to the model's context."
        )
    if fid == "empty_completion":
        return f"{plural(n, 'example has', 'examples have')} an empty completion."
    if fid == "unreadable_lines":
        return f"{plural(n, 'line is not a JSON object', 'lines are not JSON objects')} and will be left out."
    if fid == "task_type":
        return (
            "This looks like classification data. Keep a validation file (the split below makes "
            "one) and turn on “Compute classification metrics” when you create the fine-tune, "
            "to see accuracy, precision and recall as it trains."
        )
    if fid == "num_examples":
        match = re.search(r"contains (\d+)", finding["message"])
        count = int(match.group(1)) if match else n
        text = f"The file has {plural(count, 'example')}."
        if finding.get("level") == "warning":
            text += (
                " A few hundred or more usually work better: quality tends to grow with every "
                "doubling of the data. Try the data-scaling forecast on the create form to see "
                "whether yours would."
            )
        return text
    message = ROWS.sub("", finding["message"]).strip()
    # Counts of one in the legacy texts ("1 rows are", "1 lines are").
    message = re.sub(
        r"\b1 (rows|lines|examples) are\b", lambda m: f"1 {m.group(1)[:-1]} is", message
    )
    return message.replace("fine_tunes.create", "the create form")
