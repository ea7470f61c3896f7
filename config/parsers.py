"""The /v1 JSON body parser: every JSON body goes through `common.safejson`, in this one place.

DRF hands JSONParser subclasses the body already read through `HttpRequest.body`, which raises
RequestDataTooBig past DATA_UPLOAD_MAX_MEMORY_SIZE (mapped to a 413 in `config.api`).
"""

from __future__ import annotations

from typing import Any

from rest_framework.parsers import JSONParser

from common import safejson
from common.errors import ServiceError

PARSE_HINT = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The API expects a JSON payload, but what was sent was "
    "not valid JSON.)"
)


class BoundedJsonParser(JSONParser):
    """JSON with bounded nesting, valid Unicode only, no NaN: a 400 naming the problem, never
    a RecursionError or a UnicodeEncodeError further down."""

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        data = stream.read()
        try:
            return safejson.loads(data)
        except safejson.JsonProblem as problem:
            raise ServiceError(f"{PARSE_HINT} {problem.message}", param=problem.param) from None
