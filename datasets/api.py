"""/v1/files: OpenAI's Files API (reference §2), backed by datasets.services."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.core.files.uploadhandler import FileUploadHandler
from django.http import FileResponse
from rest_framework import serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.http import AuthedApiRequest, api_org
from common.pagination import cursor_page, parse_limit
from config.api import ApiError, not_found
from datasets import selectors, services
from datasets.models import File

# Room for the multipart framing and the `purpose` field around the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


def file_json(file: File) -> dict[str, Any]:
    return {
        "id": file.public_id,
        "object": "file",
        "bytes": file.bytes,
        "created_at": int(file.created_at.timestamp()),
        "filename": file.filename,
        "purpose": file.purpose,
        "status": file.status,
        "status_details": file.status_details,
    }


def _get_file(request: AuthedApiRequest, file_id: str) -> File:
    """The org's file, or 404 "No such File object" (also for another org's: never leak)."""
    file = selectors.file_find_for_org(organization=api_org(request), file_id=file_id)
    if file is None:
        raise not_found("File", file_id)
    return file


class _UploadSizeLimit(FileUploadHandler):
    """Stops a multipart upload as soon as its files pass MAX_UPLOAD_BYTES.

    Without it Django would spool the whole body to disk before the service could say no,
    which matters when a client sends no (or a false) Content-Length.
    """

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


class FileListCreateApi(APIView):
    class InputSerializer(serializers.Serializer[None]):
        file = serializers.FileField(allow_empty_file=True, use_url=False)
        purpose = serializers.CharField()

    def get(self, request: AuthedApiRequest) -> Response:
        params = request.query_params
        order = params.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise ApiError("order must be 'asc' or 'desc'.", param="order")
        limit = parse_limit(params.get("limit"), default=10_000)
        files = selectors.file_list_for_org(organization=api_org(request))
        if purpose := params.get("purpose"):
            files = files.filter(purpose=purpose)
        files = files.order_by(
            *(("-created_at", "-id") if order == "desc" else ("created_at", "id"))
        )
        page, has_more = cursor_page(files, after=params.get("after") or None, limit=limit)
        return Response(
            {
                "object": "list",
                "data": [file_json(f) for f in page],
                "first_id": page[0].public_id if page else None,
                "last_id": page[-1].public_id if page else None,
                "has_more": has_more,
            }
        )

    def post(self, request: AuthedApiRequest) -> Response:
        # Say no before reading a body that is too big anyway.
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > settings.MAX_UPLOAD_BYTES + MULTIPART_OVERHEAD_BYTES:
            raise services.too_large(length)
        request._request.upload_handlers.insert(0, _UploadSizeLimit(request._request))
        try:
            data = self.InputSerializer(data=request.data)
        except RequestDataTooBig:
            # A non-file body over DATA_UPLOAD_MAX_MEMORY_SIZE, e.g. the file sent as a field.
            raise services.too_large() from None
        except SuspiciousOperation as exc:  # too many fields or files
            raise ApiError(f"The upload was refused: {exc}", param="file") from None
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        file = services.file_create(
            organization=api_org(request),
            uploaded_by=request.user if request.user.is_authenticated else None,
            filename=upload.name or "",
            purpose=data.validated_data["purpose"],
            content=upload,
        )
        return Response(file_json(file))


class FileDetailApi(APIView):
    def get(self, request: AuthedApiRequest, file_id: str) -> Response:
        return Response(file_json(_get_file(request, file_id)))

    def delete(self, request: AuthedApiRequest, file_id: str) -> Response:
        file = _get_file(request, file_id)
        services.file_delete(file=file)
        return Response({"id": file.public_id, "object": "file", "deleted": True})


class _AnyAccept(BaseContentNegotiation):
    """Serve whatever the client accepts: the SDK asks for `application/binary`, and the only
    thing rendered here is an error, which is JSON whatever was asked for."""

    def select_parser(self, request: Any, parsers: Any) -> Any:
        return parsers[0] if parsers else None

    def select_renderer(self, request: Any, renderers: Any, format_suffix: Any = None) -> Any:
        return renderers[0], renderers[0].media_type


class FileContentApi(APIView):
    content_negotiation_class = _AnyAccept

    def get(self, request: AuthedApiRequest, file_id: str) -> FileResponse:
        file = _get_file(request, file_id)
        is_csv = file.purpose == File.Purpose.FINE_TUNE_RESULTS
        return FileResponse(
            services.file_open(file=file),
            content_type="text/csv; charset=utf-8" if is_csv else "application/octet-stream",
            as_attachment=True,
            filename=file.filename,
        )
