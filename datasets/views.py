"""Browser pages for datasets: list, upload (with a column mapping step), detail and fixes.

The pages call the same services as the Files API (`datasets.services.file_create`,
`file_delete`) and, for the findings and "Apply fixes", `file_findings_ensure` and
`file_apply_fixes` over the same analysis as `manage.py prepare_data` (`datasets.prepare`).
Every failure ends in a message on a page, never a 500; another organization's file is a 404.
"""

from __future__ import annotations

import json
import logging
from pathlib import PurePath
from typing import Any

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.http import FileResponse, Http404, HttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.html import escape
from django.utils.http import urlencode
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.decorators.vary import vary_on_headers

from accounts.http import AuthedHtmxRequest
from accounts.views import org_required
from common import downloads
from common.downloads import ExportBox, render_box, stream
from common.errors import ServiceError
from common.forms import error_message
from common.redact import redact
from datasets import advice, prepare, readers, selectors, services, staging, uploads
from datasets.forms import MappingForm, UploadForm
from datasets.labels import known_labels
from datasets.models import File
from engine import chat_format
from jobs.selectors import jobs_of_results_files
from models_app import services as model_services
from models_app.models import Export

logger = logging.getLogger(__name__)

LIST = "datasets/list.html"
UPLOAD = "datasets/upload.html"
DETAIL = "datasets/detail.html"
PREVIEW_ROWS = 20
MAPPING_PREVIEW_ROWS = 5
STAGED_KEY = "datasets_staged"
STAGED_MAX = 5  # uploads waiting for their mapping step, per session
NO_HEADER = "first_row_is_data"


def _file_or_404(request: AuthedHtmxRequest, file_id: str) -> File:
    file = selectors.file_find_for_org(organization=request.organization, file_id=file_id)
    if file is None:
        raise Http404("No such dataset.")
    return file


def token_total(stats: dict[str, Any]) -> int | None:
    """Total tokens from File.stats (a {"total": …} dict from validation, or a plain number)."""
    tokens = stats.get("tokens")
    if isinstance(tokens, dict):
        tokens = tokens.get("total")
    return tokens if isinstance(tokens, int) else None


# --- list -----------------------------------------------------------------------------------


@org_required
@require_GET
@vary_on_headers("HX-Request")
def file_list(request: AuthedHtmxRequest) -> HttpResponse:
    # Results files (compiled_results.csv) are a job's output, not data: listed apart, each
    # with its job, so they don't bury the datasets.
    results = request.GET.get("show") == "results"
    files = selectors.file_list_for_org(organization=request.organization)
    if results:
        files = files.filter(purpose=File.Purpose.FINE_TUNE_RESULTS)
    else:
        files = files.exclude(purpose=File.Purpose.FINE_TUNE_RESULTS)
    shown = list(files[:500])
    jobs = jobs_of_results_files(file_ids=[f.pk for f in shown]) if results else {}
    for file in shown:
        # Template-only attributes, computed once here rather than per row in the template.
        file.token_total = token_total(file.stats)  # type: ignore[attr-defined]  # for the template
        file.job = jobs.get(file.pk)  # type: ignore[attr-defined]  # for the template
    # Poll only while a file is still being validated; the last render carries no trigger.
    polling = any(f.status == File.Status.UPLOADED for f in shown)
    template = f"{LIST}#file-table" if request.htmx else LIST
    context = {"files": shown, "polling": polling, "results": results}
    return render(request, template, context)


# --- upload and the mapping step -------------------------------------------------------------


@csrf_exempt  # only until the size limit is in place: _file_upload checks CSRF itself
@org_required
@require_http_methods(["GET", "POST"])
def file_upload(request: AuthedHtmxRequest) -> HttpResponse:
    # The CSRF check reads request.POST, which parses the body: the limit must come first.
    if request.method == "POST":
        try:
            uploads.limit_upload(request)
        except ServiceError as exc:
            return _too_large(request, exc)
    return _file_upload(request)


def _too_large(request: AuthedHtmxRequest, exc: ServiceError) -> HttpResponse:
    form = UploadForm()
    form.errors["file"] = form.error_class([exc.message])
    return render(request, UPLOAD, {"form": form}, status=413)


@csrf_protect
def _file_upload(request: AuthedHtmxRequest) -> HttpResponse:
    try:
        form = UploadForm(request.POST or None, request.FILES or None)
    except ServiceError as exc:  # UploadSizeLimit stopped the body mid-stream
        return _too_large(request, exc)
    if request.method == "POST" and form.is_valid():
        upload = form.cleaned_data["file"]
        if readers.kind_of(upload.name) == "JSONL":
            try:
                file = services.file_create(
                    organization=request.organization,
                    uploaded_by=request.user,
                    filename=upload.name,
                    purpose=File.Purpose.FINE_TUNE,
                    content=upload,
                )
            except (ServiceError, ValidationError) as exc:
                form.add_error("file", error_message(exc))
            else:
                messages.success(request, f"Uploaded {file.filename}; validating it now.")
                return redirect(file)
        else:
            # Read the start now: a broken file is refused here, not after the mapping step.
            try:
                upload.seek(0)
                readers.read_any(upload.file, upload.name, head=MAPPING_PREVIEW_ROWS)
            except readers.ReadError as exc:
                form.add_error("file", exc.message)
            else:
                return redirect("datasets:map", _stage(request, upload))
    status = 400 if form.errors else 200
    return render(request, UPLOAD, {"form": form}, status=status)


def _stage(request: AuthedHtmxRequest, upload: Any) -> str:
    """Keep an upload until its columns are mapped; the session remembers whose it is."""
    path = staging.staging_save(organization=request.organization, upload=upload)
    token = PurePath(path).name
    staged: dict[str, dict[str, Any]] = request.session.get(STAGED_KEY, {})
    staged[token] = {"path": path, "filename": upload.name, "org": request.organization.pk}
    while len(staged) > STAGED_MAX:
        staging.staging_discard(staged.pop(next(iter(staged)))["path"])
    request.session[STAGED_KEY] = staged
    return token


def _staged_or_404(request: AuthedHtmxRequest, token: str) -> dict[str, Any]:
    staged: dict[str, Any] | None = request.session.get(STAGED_KEY, {}).get(token)
    if staged is None or staged["org"] != request.organization.pk:
        raise Http404("This upload has expired or belongs to another organization.")
    return staged


def _discard(request: AuthedHtmxRequest, token: str) -> None:
    staged = request.session.get(STAGED_KEY, {})
    if token in staged:
        staging.staging_discard(staged.pop(token)["path"])
        request.session[STAGED_KEY] = staged


def _read_staged(
    staged: dict[str, Any], *, head: int | None, header: bool = True
) -> readers.ReadResult:
    with default_storage.open(staged["path"], "rb") as fh:
        # An opened storage file always has its `.file`; the stub allows None for a closed one.
        raw = fh.file
        assert raw is not None
        return readers.read_any(raw, staged["filename"], head=head, header=header)


@org_required
@require_http_methods(["GET", "POST"])
@vary_on_headers("HX-Request")
def file_map(request: AuthedHtmxRequest, token: str) -> HttpResponse:
    """Choose the prompt/completion (or chat) columns of a table, then convert it to JSONL."""
    staged = _staged_or_404(request, token)
    posting = request.method == "POST"
    # "First row is data": the table has no header row (offered when its first row looks so).
    header = (request.POST if posting else request.GET).get(NO_HEADER) != "1"
    try:
        read = _read_staged(
            staged, head=None if posting else MAPPING_PREVIEW_ROWS + 1, header=header
        )
    except FileNotFoundError:
        # Never mapped within TUNERY_STAGING_MAX_AGE_SECONDS: staging.staging_sweep took it.
        _discard(request, token)
        messages.error(request, "This upload has expired; please upload the file again.")
        return redirect("datasets:upload")
    except (readers.ReadError, OSError) as exc:
        _discard(request, token)
        messages.error(
            request, getattr(exc, "message", None) or redact(f"Could not read it: {exc}")
        )
        return redirect("datasets:upload")
    columns = read.columns or readers.columns_of(read.rows)
    chat_as_is = prepare.is_chat(read.rows)
    data = request.POST if posting else (request.GET if request.htmx else None)
    form = MappingForm(data, columns=columns)

    if posting and (chat_as_is or form.is_valid()):
        rows = read.rows if chat_as_is else form.convert(read.rows)
        name = f"{PurePath(staged['filename']).stem or 'dataset'}.jsonl"
        try:
            file = services.file_create(
                organization=request.organization,
                uploaded_by=request.user,
                filename=name,
                purpose=File.Purpose.FINE_TUNE,
                content=ContentFile(prepare.jsonl_bytes(rows), name=name),
            )
        except (ServiceError, ValidationError) as exc:
            form.add_error(None, error_message(exc))
        else:
            _discard(request, token)
            messages.success(
                request, f"Converted {len(rows):,} rows from {read.kind} to JSONL as {name}."
            )
            return redirect(file)

    preview = read.rows[:MAPPING_PREVIEW_ROWS]
    if chat_as_is:
        converted = preview
    elif form.is_bound and form.is_valid():
        converted = form.convert(preview)
    else:
        converted = _default_conversion(form, columns, preview)
    context = {
        "token": token,
        "filename": staged["filename"],
        "read": read,
        "columns": columns,
        "table": [[readers.cell_text(row.get(c)) for c in columns] for row in preview],
        "form": form,
        "chat_as_is": chat_as_is,
        "converted": [json.dumps(r, ensure_ascii=False) for r in converted],
        "no_header": not header,
        "no_header_field": NO_HEADER,
    }
    if request.htmx and not posting:
        return render(request, f"{UPLOAD}#mapping-preview", context)
    return render(request, UPLOAD, context, status=400 if form.errors else 200)


def _default_conversion(
    form: MappingForm, columns: list[str], rows: list[Any]
) -> list[dict[str, Any]]:
    initial = form.initial
    if initial["mode"] == prepare.PREFERENCE and initial["prompt"]:
        return prepare.rows_to_preference(
            rows,
            system=initial["system"] or None,
            system_text="",
            prompt=initial["prompt"],
            chosen=initial["chosen"],
            rejected=initial["rejected"],
        )
    if initial["mode"] == prepare.CHAT and initial["user"] and initial["assistant"]:
        return prepare.rows_to_chat(
            rows,
            system=initial["system"] or None,
            system_text="",
            user=initial["user"],
            assistant=initial["assistant"],
        )
    if not initial["completion"]:
        return []
    return prepare.rows_to_prompt_completion(
        rows, prompt=initial["prompt"] or None, completion=initial["completion"]
    )


# --- detail -----------------------------------------------------------------------------------


@org_required
@require_GET
@vary_on_headers("HX-Request")
def file_detail(request: AuthedHtmxRequest, file_id: str) -> HttpResponse:
    file = _file_or_404(request, file_id)
    if request.htmx:  # the polled body: the CSV export is beside it, polled on its own
        return render(request, f"{DETAIL}#file-body", _detail_context(request, file))
    context = _detail_context(request, file)
    if file.format == File.Format.PROMPT_COMPLETION:
        context["csv_export"] = _csv_box(file)
    return render(request, DETAIL, context)


def _detail_context(request: AuthedHtmxRequest, file: File) -> dict[str, Any]:
    stored = services.file_findings_ensure(file=file) or {}
    findings = stored if "findings" in stored else None
    findings_note = stored.get("unavailable")
    stats = file.stats or {}
    preview = None
    if file.status != File.Status.UPLOADED:
        known = findings or {}
        # Classification labels share endings by chance ("positive"/"negative" → "tive"); the
        # original ignored the completion ending for them, and so does the highlight.
        stop = (
            ""
            if known.get("task_type") == prepare.CLASSIFICATION
            else known.get("completion_suffix", "")
        )
        preview = _preview(file, known.get("prompt_suffix", ""), stop)
    derivatives = selectors.file_list_for_org(organization=request.organization).filter(
        derived_from=file
    )
    return {
        "file": file,
        # Validating, or the default worker is analysing it: the page asks again every 2 s.
        "polling": file.status == File.Status.UPLOADED or services.file_analysis_pending(file=file),
        "summary": _summary(file, stats),
        "token_rows": [
            (label, stats[key])
            for key, label in (
                ("example_tokens", "per example"),
                ("prompt_tokens", "prompt"),
                ("completion_tokens", "completion"),
            )
            if isinstance(stats.get(key), dict)
        ],
        "charts": _charts(stats),
        "more_errors": max(file.error_count - len(file.errors or []), 0),
        "findings": _findings_view(findings) if findings else None,
        "findings_note": findings_note,
        "split_id": prepare.SPLIT,
        "preview": preview,
        "preview_chat": any("messages" in row for row in preview or []),
        "preview_pairs": any("preferred" in row for row in preview or []),
        "derivatives": derivatives,
        "is_training_data": file.purpose == File.Purpose.FINE_TUNE,
        # A results file (compiled_results.csv) names the job it came from.
        "results_of": (
            jobs_of_results_files(file_ids=[file.pk]).get(file.pk)
            if file.purpose == File.Purpose.FINE_TUNE_RESULTS
            else None
        ),
        "finetune_url": _finetune_url(request, file),
    }


def _finetune_url(request: AuthedHtmxRequest, file: File) -> str | None:
    """The create form pre-filled for this file: with its validation half after a split, and
    for classification data the metrics on, the rarer of two classes as the positive one."""
    if (
        file.purpose != File.Purpose.FINE_TUNE
        or file.status != File.Status.PROCESSED
        or file.error_count
    ):
        return None
    training, validation = file, None
    if file.derived_from_id and file.filename.endswith(
        ("_prepared_train.jsonl", "_prepared_valid.jsonl")
    ):
        stem = file.filename.rsplit("_prepared_", 1)[0]
        siblings = {
            f.filename: f
            for f in selectors.file_list_for_org(organization=request.organization).filter(
                derived_from_id=file.derived_from_id, status=File.Status.PROCESSED, error_count=0
            )
        }
        training = siblings.get(f"{stem}_prepared_train.jsonl") or file
        validation = siblings.get(f"{stem}_prepared_valid.jsonl")
    params = {"training_file": training.public_id}
    if validation is not None:
        params["validation_file"] = validation.public_id
        labels = known_labels(training, validation)
        if labels and (training.stats or {}).get("task_type") == prepare.CLASSIFICATION:
            params["compute_classification_metrics"] = "on"
            if len(labels) == 2:
                params["classification_positive_class"] = min(labels, key=lambda k: labels[k])
            else:
                params["classification_n_classes"] = str(len(labels))
    return f"{reverse('jobs:create')}?{urlencode(params)}"


def _summary(file: File, stats: dict[str, Any]) -> list[dict[str, Any]]:
    """The headline numbers of File.stats, as (label, value, note) for the stats grid."""
    if file.status == File.Status.UPLOADED or not stats:
        return []
    examples, lines = stats.get("examples", 0), stats.get("lines")
    # One numbering: lines of the file. Examples are the lines that are valid examples.
    note = f"valid, of {lines:,} lines" if isinstance(lines, int) and lines != examples else ""
    items: list[dict[str, Any]] = [{"label": "Examples", "value": f"{examples:,}", "note": note}]
    total = token_total(stats)
    if total is not None:
        items.append({"label": "Tokens", "value": f"{total:,}", "note": stats.get("tokenizer")})
    if stats.get("task_type"):
        items.append({"label": "Looks like", "value": stats["task_type"], "note": file.format})
    duplicates = stats.get("duplicates")
    if isinstance(duplicates, dict):
        lines = ", ".join(str(n) for n in duplicates.get("lines", [])[:5])
        note = f"lines {lines}" if lines else ""
        items.append({"label": "Duplicates", "value": f"{duplicates['count']:,}", "note": note})
    over = stats.get("over_context")
    if isinstance(over, dict):
        label = f"Over {stats.get('context_length', '?')} tokens"
        items.append({"label": label, "value": f"{over['count']:,}", "note": ""})
    chat = stats.get("chat")
    if isinstance(chat, dict) and (chat.get("tool_calls") or chat.get("examples_with_tools")):
        note = f"{chat.get('examples_with_tools', 0):,} examples define tools"
        items.append({"label": "Tool calls", "value": f"{chat['tool_calls']:,}", "note": note})
    if isinstance(chat, dict) and chat.get("weight_0"):
        note = f"of {chat.get('assistant_messages', 0):,} assistant messages (weight 0)"
        items.append({"label": "Not trained", "value": f"{chat['weight_0']:,}", "note": note})
    return items


def _findings_view(findings: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for finding in findings["findings"]:
        rows.append(
            {
                **finding,
                "message": advice.web_message(finding),
                "lines_more": finding["row_count"] - len(finding["lines"] or []),
            }
        )
    remediations = [f["remediation"] for f in findings["findings"] if f["remediation"]]
    return {
        **findings,
        "findings": rows,
        "necessary": [r for r in remediations if r["kind"] == "necessary"],
        "recommended": [r for r in remediations if r["kind"] == "recommended"],
    }


# --- the first rows, with whitespace made visible ------------------------------------------


def visible(text: str, *, ending: str = "", ending_title: str = "") -> SafeString:
    """HTML for text with its invisible parts shown: ␣ for edge spaces, \\n, \\t, and the
    common ending (separator or stop sequence) highlighted."""
    body, tail = text, ""
    if ending and text.endswith(ending):
        body, tail = text[: -len(ending)], text[-len(ending) :]
    html = _marks(body, edges=not tail)
    if tail:
        html += (
            f'<span class="sep" title="{escape(ending_title)}">{_marks(tail, edges=True)}</span>'
        )
    return mark_safe(html)  # every piece of text went through escape()


def _marks(text: str, *, edges: bool) -> str:
    space = '<span class="ws">␣</span>'
    if not text.strip(" "):
        return space * len(text)
    lead = len(text) - len(text.lstrip(" "))
    trail = len(text) - len(text.rstrip(" ")) if edges else 0
    middle = (
        escape(text[lead : len(text) - trail])
        .replace("\n", '<span class="ws">\\n</span>\n')
        .replace("\t", '<span class="ws">\\t</span>')
    )
    return space * lead + middle + space * trail


def _preview(file: File, prompt_suffix: str, completion_suffix: str) -> list[dict[str, Any]]:
    if file.purpose != File.Purpose.FINE_TUNE:
        return []
    rows: list[dict[str, Any]] = []
    try:
        with file.blob.open("rb") as fh:
            for number, value in readers.iter_jsonl(fh):
                rows.append(_preview_row(number, value, prompt_suffix, completion_suffix))
                if len(rows) >= PREVIEW_ROWS:
                    break
    except OSError as exc:
        logger.warning("Could not read %s: %s", file.public_id, exc)
        return [{"line": None, "problem": "The stored file could not be read."}]
    return rows


def _preview_row(
    number: int, value: Any, prompt_suffix: str, completion_suffix: str
) -> dict[str, Any]:
    if isinstance(value, Exception):
        return {"line": number, "problem": "not valid JSON"}
    if not isinstance(value, dict):
        return {"line": number, "problem": "not a JSON object"}
    if chat_format.is_preference_row(value):
        # A DPO pair: the input's messages, then both outputs side by side.
        raw_input = value.get("input")
        given: dict[str, Any] = raw_input if isinstance(raw_input, dict) else {}

        def messages_of(items: Any) -> list[dict[str, Any]]:
            items = items if isinstance(items, list) else []
            return [_preview_message(m) for m in items if isinstance(m, dict)]

        raw_tools = given.get("tools")
        pair_tools: list[Any] = raw_tools if isinstance(raw_tools, list) else []
        return {
            "line": number,
            "messages": messages_of(given.get("messages")),
            "tools": _preview_tools(pair_tools),
            "preferred": messages_of(value.get("preferred_output")),
            "non_preferred": messages_of(value.get("non_preferred_output")),
        }
    if "messages" in value and isinstance(value["messages"], list):
        messages = [_preview_message(m) for m in value["messages"] if isinstance(m, dict)]
        tools = value.get("tools") if isinstance(value.get("tools"), list) else None
        if tools is None and isinstance(value.get("functions"), list):
            tools = [{"function": f} for f in value["functions"]]
        return {"line": number, "messages": messages, "tools": _preview_tools(tools or [])}
    return {
        "line": number,
        "prompt": visible(
            readers.cell_text(value.get("prompt")),
            ending=prompt_suffix,
            ending_title="separator (common prompt ending)",
        ),
        "completion": visible(
            readers.cell_text(value.get("completion")),
            ending=completion_suffix,
            ending_title="stop sequence (common completion ending)",
        ),
    }


def _preview_message(message: dict[str, Any]) -> dict[str, Any]:
    """One message for the preview: its text, and its tool calls as `name(arguments)`."""
    content = message.get("content")
    text = chat_format.content_text(content) if isinstance(content, list) else content
    calls = message.get("tool_calls")
    if not isinstance(calls, list):
        calls = [{"function": message["function_call"]}] if "function_call" in message else []
    return {
        "role": str(message.get("role", "?")),
        "content": visible(readers.cell_text(text)) if text is not None else "",
        "weight": message.get("weight"),
        "calls": [_call_text(call) for call in calls],
        "answers": message.get("tool_call_id"),
    }


def _call_text(call: Any) -> str:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        return json.dumps(call, ensure_ascii=False)
    arguments = function.get("arguments")
    try:
        parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
        shown = json.dumps(parsed, ensure_ascii=False, indent=2)
    except ValueError:
        shown = str(arguments)  # the validation errors say what is wrong with it
    where = f" [{call['id']}]" if isinstance(call.get("id"), str) else ""
    return f"{function.get('name', '?')}({shown}){where}"


def _preview_tools(tools: list[Any]) -> list[dict[str, str]]:
    out = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict):
            parameters = function.get("parameters")
            names = (
                ", ".join(parameters.get("properties") or {})
                if isinstance(parameters, dict)
                else ""
            )
            out.append(
                {
                    "name": f"{function.get('name', '?')}({names})",
                    "description": str(function.get("description") or ""),
                }
            )
    return out


# --- charts -------------------------------------------------------------------------------

CHART_COLOR = "#3a5bd9"


def _layout(title: str, xtitle: str) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "height": 260,
        "margin": {"t": 36, "r": 10, "b": 40, "l": 48},
        "xaxis": {"title": {"text": xtitle}},
        "yaxis": {"title": {"text": "examples"}},
        "bargap": 0.05,
    }


def _charts(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Plotly figures (plain dicts) for the token-length histograms and the label counts."""
    charts = []
    for key, title in (
        ("example_tokens", "Tokens per example"),
        ("prompt_tokens", "Prompt tokens"),
        ("completion_tokens", "Completion tokens"),
    ):
        summary = stats.get(key)
        if not isinstance(summary, dict) or not summary.get("histogram"):
            continue
        edges, counts = summary["histogram"]["edges"], summary["histogram"]["counts"]
        width = (edges[1] - edges[0]) if len(edges) > 1 else 1
        # Bin i holds lengths edges[i] .. edges[i] + width - 1: centre the bar on them.
        trace = {
            "type": "bar",
            "x": [edges[i] + (width - 1) / 2 for i in range(len(counts))],
            "y": counts,
            "width": [width] * len(counts),
            "marker": {"color": CHART_COLOR},
            "hovertemplate": "%{x} tokens: %{y} examples<extra></extra>",
        }
        charts.append(
            {"id": f"chart-{key}", "figure": {"data": [trace], "layout": _layout(title, "tokens")}}
        )
    labels = stats.get("labels")
    if isinstance(labels, dict) and labels:
        names = [json.dumps(label, ensure_ascii=False) for label in labels]
        trace = {
            "type": "bar",
            "x": names,
            "y": list(labels.values()),
            "marker": {"color": "#1f8a4c"},
        }
        layout = _layout("Label distribution", "completion")
        layout["xaxis"]["type"] = "category"
        charts.append({"id": "chart-labels", "figure": {"data": [trace], "layout": layout}})
    return charts


# --- actions --------------------------------------------------------------------------------


@org_required
@require_POST
def file_fix(request: AuthedHtmxRequest, file_id: str) -> HttpResponse:
    """Apply the chosen fixes to a copy: a NEW file derived from this one, which stays as is."""
    file = _file_or_404(request, file_id)
    try:
        fixed = services.file_apply_fixes(
            file=file, accepted=request.POST.getlist("accept"), uploaded_by=request.user
        )
    except (ServiceError, ValidationError) as exc:
        messages.error(request, error_message(exc))
        return redirect(file)
    if not fixed.files:
        messages.info(request, "Nothing to change: no fix was selected and none is necessary.")
        return redirect(file)
    summary = ", ".join(
        f"{f.filename} ({n:,} examples)" for f, n in zip(fixed.files, fixed.examples, strict=True)
    )
    text = f"Created {summary}; {file.filename} is unchanged."
    if fixed.split:
        text += " “Fine-tune with these files” opens the create form with both, set up for them."
    messages.success(request, text)
    return redirect(fixed.files[0])


@org_required
@require_GET
def file_download(request: AuthedHtmxRequest, file_id: str) -> HttpResponseBase:
    file = _file_or_404(request, file_id)
    try:
        stream = services.file_open(file=file)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect(file)
    return FileResponse(stream, as_attachment=True, filename=file.filename)


def _csv_box(file: File, error: str | None = None) -> ExportBox:
    return ExportBox(
        dom_id="csv-export",
        testid="csv",
        state=model_services.export_state(kind=Export.Kind.CSV, subject=file),
        start_url=reverse("datasets:export_csv_prepare", args=[file.public_id]),
        status_url=reverse("datasets:export_csv_status", args=[file.public_id]),
        download_url=reverse("datasets:export_csv", args=[file.public_id]),
        prepare="Prepare CSV",
        preparing="Preparing the CSV…",
        ready="Download CSV",
        error=error,
    )


@org_required
@require_POST
def file_export_csv_prepare(request: AuthedHtmxRequest, file_id: str) -> HttpResponse:
    """Queue the CSV export of a prompt/completion file: a worker reads the whole file (up to
    64 MiB), never the web request."""
    file = _file_or_404(request, file_id)
    return downloads.prepare(
        request,
        lambda: model_services.export_start(kind=Export.Kind.CSV, subject=file),
        lambda error: _csv_box(file, error),
        file,
    )


@org_required
@require_GET
@vary_on_headers("HX-Request")
def file_export_csv_status(request: AuthedHtmxRequest, file_id: str) -> HttpResponse:
    return render_box(request, _csv_box(_file_or_404(request, file_id)))


@org_required
@require_GET
def file_export_csv(request: AuthedHtmxRequest, file_id: str) -> HttpResponseBase:
    """The CSV a worker built (formula-looking cells neutralised), streamed; until it is built,
    back to the file's page, which offers to prepare it."""
    file = _file_or_404(request, file_id)
    try:
        handle = model_services.export_open(kind=Export.Kind.CSV, subject=file)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect(file)
    name = f"{PurePath(file.filename).stem or 'dataset'}.csv"
    return stream(handle, name, "text/csv; charset=utf-8")


@org_required
@require_POST
def file_delete(request: AuthedHtmxRequest, file_id: str) -> HttpResponse:
    file = _file_or_404(request, file_id)
    name = file.filename
    try:
        services.file_delete(file=file)
    except (ServiceError, ValidationError) as exc:
        messages.error(request, f"{name} was not deleted: {error_message(exc)}")
        return redirect(file)
    messages.success(request, f"Deleted {name}.")
    return redirect("datasets:list")
