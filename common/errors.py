"""The service layer's one error type: what a request asked for that the domain refuses.

Services, selectors and the inference protocol raise `ServiceError` (or Django's
ValidationError for a field); they never build HTTP responses and never import the web
framework. One mapping per interface turns it into what that interface shows:

- `/v1`: `config.api.exception_handler` writes OpenAI's envelope
  ({"error": {"message", "type", "param", "code"}}) with `status` and `headers`;
- browser forms: `common.forms.form_error` puts the message on the field `param` names;
- any other browser view: `config.api.ServiceErrorMiddleware` answers the error page with
  `status` (or a view catches it to show the message where the user is).

`status` is the HTTP status OpenAI answers for this kind of refusal (400 invalid, 404 unknown
object, 409 conflicting state, 413 too large, 429 busy, 503 unavailable): the wire contract is
OpenAI's, so the domain speaks its codes rather than a second vocabulary mapped onto them.
"""

from __future__ import annotations

INVALID_REQUEST = "invalid_request_error"


class ServiceError(Exception):
    """A refusal with OpenAI's fields: the message names the problem, `param` the input."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        type: str = INVALID_REQUEST,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type
        self.headers = headers or {}


def not_found(kind: str, object_id: str, *, param: str = "id") -> ServiceError:
    return ServiceError(f"No such {kind} object: {object_id}", status=404, param=param)
