"""The upload size limit, enforced while the body streams in (the Files API and the upload page).

Django spools a multipart upload to a temporary file before any view code runs; without this,
a body far over the limit (or one with no or a false Content-Length) would be written to disk
whole before anyone could say no.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest

from datasets import services

# Room for the multipart framing and the `purpose` field around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class UploadSizeLimit(FileUploadHandler):
    """First in the handler chain: raises ServiceError 413 (`services.too_large`) as soon as the
    files of the body pass MAX_UPLOAD_BYTES, before the chunk that would pass it reaches the
    handler that writes the temporary file."""

    def __init__(self, request: Any = None) -> None:
        super().__init__(request)
        self.received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > settings.MAX_UPLOAD_BYTES:
            raise services.too_large()
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler builds the UploadedFile


def limit_upload(request: HttpRequest) -> None:
    """Refuse from the Content-Length what is too big anyway, and enforce the limit while
    streaming the rest. Call before anything reads request.POST or request.FILES.

    Raises ServiceError 413.
    """
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > settings.MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES:
        raise services.too_large(length)
    request.upload_handlers.insert(0, UploadSizeLimit(request))
