"""/v1/files: OpenAI's Files API (reference §2), backed by datasets.services."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.http import FileResponse, QueryDict
from rest_framework import serializers
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.http import AuthedApiRequest, api_org
from common.errors import ServiceError, not_found
from common.pagination import cursor_page, parse_limit
from config.parsers import BoundedJsonParser
from datasets import selectors, services, uploads
from datasets.models import File


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


class FileListCreateApi(APIView):
    parser_classes = [BoundedJsonParser, MultiPartParser, FormParser]

    class InputSerializer(serializers.Serializer[None]):
        file = serializers.FileField(allow_empty_file=True, use_url=False)
        purpose = serializers.CharField()

    def get(self, request: AuthedApiRequest) -> Response:
        params = request.query_params
        order = params.get("order") or "desc"
        if order not in ("asc", "desc"):
            raise ServiceError("order must be 'asc' or 'desc'.", param="order")
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
        uploads.limit_upload(request._request)
        try:
            data = self.InputSerializer(data=request.data)
        except RequestDataTooBig:
            # A non-file body over DATA_UPLOAD_MAX_MEMORY_SIZE, e.g. the file sent as a field.
            raise services.too_large() from None
        except SuspiciousOperation as exc:  # too many fields or files
            raise ServiceError(f"The upload was refused: {exc}", param="file") from None
        parts = request.data
        # A multipart body parses to a QueryDict: the one kind of body that can repeat a part.
        names = ("file", "purpose") if isinstance(parts, QueryDict) else ()
        for name in names:
            assert isinstance(parts, QueryDict)
            given = parts.getlist(name)
            if len(given) > 1:
                # Storing the last part silently would train on a file the client didn't mean.
                raise ServiceError(f"Send exactly one `{name}` part, not {len(given)}.", param=name)
        data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        file = services.file_upload(
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
