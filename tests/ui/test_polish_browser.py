"""In Chromium, without a worker: the gaps issue #15 left after the dashboard tour
(tests/jobs/test_dashboard_browser.py). Keyboard-only use of the create form and the
playground, axe-core on the admin and the pages the tour sees only empty, and the small things
of items 1, 9 and 10, each checked where a user would meet it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from jobs import services
from jobs.models import FineTuneJob
from jobs.services import JobRequest
from models_app.models import UsageRecord
from tests.conftest import Persona, login
from tests.factories import FileFactory
from tests.playground.support import MakeFineTune, ft_name
from tests.ui.support import assert_accessible, htmx_idle

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

XLSX = Path(__file__).parents[1] / "datasets" / "fixtures_prepare" / "inputs" / "two_sheets.xlsx"
LABELLED = {
    "examples": 8,
    "tokens": {"total": 200, "prompt": 150, "completion": 50},
    "labels": {" spam": 3, " ham": 5},
}

# The focused element, and whether its focus ring shows (a 2 px+ outline that isn't "none").
FOCUSED = """() => {
  const e = document.activeElement;
  const s = getComputedStyle(e);
  return {id: e.id, tag: e.tagName.toLowerCase(), name: e.getAttribute("name"),
          text: (e.textContent || "").trim().slice(0, 40),
          ring: s.outlineStyle !== "none" && parseFloat(s.outlineWidth) >= 2};
}"""


@pytest.fixture
def no_queue() -> Iterator[None]:
    with mock.patch("jobs.tasks.run_training_job.delay"):
        yield


def tab_until(page: Any, done: Any, *, limit: int = 60, back: bool = False) -> list[dict[str, Any]]:
    """Press Tab (Shift+Tab with back) until done(focused) is true; every stop on the way."""
    stops = []
    for _ in range(limit):
        page.keyboard.press("Shift+Tab" if back else "Tab")
        focused = page.evaluate(FOCUSED)
        stops.append(focused)
        if done(focused):
            return stops
    raise AssertionError(f"never reached: {[s['id'] or s['text'] for s in stops]}")


def test_create_form_by_keyboard_only(
    page: Any, live_server: Any, owner: Persona, no_queue: None
) -> None:
    training = FileFactory.create(organization=owner.org, filename="sms.jsonl", stats=LABELLED)
    validation = FileFactory.create(organization=owner.org, filename="valid.jsonl", stats=LABELLED)
    login(page, live_server, owner.user.username)
    page.goto(f"{live_server.url}/jobs/new/")

    # The skip link first, then the form's fields in reading order, each with a focus ring.
    page.keyboard.press("Tab")
    assert page.evaluate(FOCUSED)["text"].lower().startswith("skip")
    page.keyboard.press("Enter")
    stops = tab_until(page, lambda f: f["id"] == "id_model")
    order = [s["id"] for s in tab_until(page, lambda f: f["text"] == "Create fine-tune")]
    fields = ["id_training_method", "id_method_type", "id_beta", "id_suffix"]
    fields += ["id_training_file", "id_validation_file"]
    fields += ["id_n_epochs", "id_batch_size", "id_learning_rate_multiplier"]
    fields += ["id_prompt_loss_weight", "id_compute_classification_metrics"]
    fields += ["id_classification_positive_class", "id_classification_n_classes"]
    fields += ["id_classification_betas", "id_scaling_forecast"]
    fields += ["id_device_class", "id_device_count"]
    assert [i for i in order if i] == fields
    assert all(s["ring"] for s in stops[-1:] + tab_until(page, lambda f: True, back=True))

    # Choose the files with the arrow keys; the positive class becomes the files' labels,
    # quoted so that the leading space shows (issue #15 item 1).
    page.focus("#id_training_file")
    page.keyboard.press("ArrowDown")
    assert page.input_value("#id_training_file") in (training.public_id, validation.public_id)
    page.select_option("#id_training_file", training.public_id)  # the exact one, by value
    page.focus("#id_validation_file")
    page.keyboard.press("ArrowDown")
    page.select_option("#id_validation_file", validation.public_id)
    # The field is swapped after each choice; wait for the one with both files' labels.
    page.wait_for_selector(
        "#id_classification_positive_class option >> text=10 examples", state="attached"
    )
    htmx_idle(page)  # an earlier choice's swap may still be on its way
    options = page.locator("#id_classification_positive_class option").all_inner_texts()
    assert options[1:] == ['" spam" · 6 examples', '" ham" · 10 examples']  # both files
    page.focus("#id_compute_classification_metrics")
    page.keyboard.press("Space")
    assert page.is_checked("#id_compute_classification_metrics")
    htmx_idle(page)
    page.focus("#id_classification_positive_class")
    page.keyboard.press("ArrowDown")
    assert page.input_value("#id_classification_positive_class") == " spam"

    # Enter in a text field submits the form.
    page.focus("#id_suffix")
    page.keyboard.type("by-keys")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    errors = page.locator(".errorlist, [data-testid=form-errors]").all_inner_texts()
    assert re.search(r"/jobs/ftjob-\w+/(#content)?$", page.url), errors
    job = FineTuneJob.objects.get(suffix="by-keys")
    assert job.classification["classification_positive_class"] == " spam"


def test_a_positive_class_the_files_lack_is_refused_on_its_field(
    page: Any, live_server: Any, owner: Persona, no_queue: None
) -> None:
    training = FileFactory.create(organization=owner.org, stats=LABELLED)
    validation = FileFactory.create(organization=owner.org, stats=LABELLED)
    login(page, live_server, owner.user.username)
    # As a link (or an old bookmark) would pre-fill it: "spam", without the leading space.
    page.goto(
        f"{live_server.url}/jobs/new/?training_file={training.public_id}"
        f"&validation_file={validation.public_id}&compute_classification_metrics=on"
        "&classification_positive_class=spam"
    )
    assert page.locator("#id_classification_positive_class option:checked").inner_text() == (
        '"spam" · not in these files'
    )
    with page.expect_navigation():
        page.click("text=Create fine-tune")
    error = page.locator("#positive-class-field .errorlist").inner_text()
    assert "“Positive class”" in error and '" spam"' in error, error
    assert not FineTuneJob.objects.exists()


def test_playground_by_keyboard_and_touch_then_the_model_page_uses_nothing(
    browser: Any, live_server: Any, owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    context = browser.new_context(has_touch=True, viewport={"width": 1366, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(20_000)
    login(page, live_server, owner.user.username)
    page.goto(f"{live_server.url}/playground/?model={model.name}")

    # Keyboard only: to the prompt, type, to Max tokens, Enter runs.
    tab_until(page, lambda f: f["id"] == "id_prompt")
    page.keyboard.type("Hello, how are")
    stops = tab_until(page, lambda f: f["id"] == "id_max_tokens")
    assert all(s["ring"] for s in stops)
    page.keyboard.press("Control+A")
    page.keyboard.type("6")
    page.keyboard.press("Enter")
    page.locator("[data-testid=output-0][data-state=done]").wait_for()
    alternatives = page.locator("[data-testid=alternatives-0]")
    assert alternatives.is_hidden()

    # The output is one tab stop; the arrow keys walk its tokens and show the alternatives.
    focused = tab_until(
        page, lambda f: "pg-text" in page.evaluate("() => document.activeElement.className")
    )[-1]
    assert focused["ring"]
    page.keyboard.press("ArrowRight")
    first = alternatives.inner_text()
    assert alternatives.is_visible() and "%" in first
    selected = (
        "() => [...document.querySelectorAll('[data-testid=output-0] .tok[data-alts]')]"
        ".findIndex(t => t.classList.contains('selected'))"
    )
    assert page.evaluate(selected) == 0
    page.keyboard.press("ArrowRight")
    assert page.evaluate(selected) == 1
    assert page.locator("[data-testid=output-0] .tok.selected").count() == 1
    page.keyboard.press("End")
    page.keyboard.press("Home")
    assert page.evaluate(selected) == 0 and alternatives.inner_text() == first

    # A tap (no hover on a phone) shows a token's alternatives too.
    page.locator("[data-testid=output-0] .tok").last.tap()
    assert page.locator("[data-testid=output-0] .tok").last.get_attribute("class") == "tok selected"
    assert_accessible(page, "playground with an output")

    # The code snippets have copy buttons that copy.
    page.click("#view-code")
    page.locator("[data-testid=code-python]").first.wait_for()
    page.click("[data-copy='#code-python-1']")
    copied = page.evaluate("() => navigator.clipboard.readText()")
    assert copied == page.inner_text("#code-python-1").strip()
    assert "client.completions.create(" in copied
    used = UsageRecord.objects.get(model_name=model.name)
    assert used.requests == 1

    # Viewing the model page runs nothing; its samples are made on demand and counted as
    # samples, apart from the user's own requests.
    page.goto(f"{live_server.url}/models/{model.name}/")
    assert "1" in page.inner_text("[data-testid=usage] tbody")
    assert UsageRecord.objects.count() == 1
    page.click("[data-testid=samples-button]")
    page.locator("[data-testid=sample-completion]").first.wait_for()
    used.refresh_from_db()
    assert used.requests == 1
    assert UsageRecord.objects.get(kind=UsageRecord.Kind.SAMPLES).requests >= 1
    assert_accessible(page, "model page")
    context.close()


def test_legacy_names_results_files_admin_and_the_small_things(
    page: Any, live_server: Any, owner: Persona, no_queue: None
) -> None:
    owner.user.is_staff = True
    owner.user.save(update_fields=["is_staff"])
    training = FileFactory.create(organization=owner.org, filename="sms.jsonl")
    jobs = [
        services.job_create(
            organization=owner.org,
            created_by=owner.user,
            req=JobRequest(api="legacy", model=name, training_file=training.public_id),
        )
        for name in ("ada", "curie")
    ]
    results = FileFactory.create(
        organization=owner.org, filename="compiled_results.csv", purpose="fine-tune-results"
    )
    FineTuneJob.objects.filter(pk=jobs[0].pk).update(status="succeeded", result_file=results)
    FineTuneJob.objects.filter(pk=jobs[1].pk).update(status="running", progress=1 / 76.8)
    failures: list[str] = []

    def record(r: Any) -> None:
        if r.status >= 400:
            failures.append(f"{r.status} {r.url}")

    page.on("response", record)

    # The login keeps the username after a wrong password.
    page.goto(f"{live_server.url}/login/")
    page.fill("#id_username", owner.user.username)
    page.fill("#id_password", "not it")
    page.click("button[type=submit]")
    assert page.input_value("#id_username") == owner.user.username
    login(page, live_server, owner.user.username)

    # ada and curie are two names of one base model, not two models.
    page.goto(f"{live_server.url}/jobs/")
    bases = page.locator("[data-testid=job-table] [data-testid=job-base]").all_inner_texts()
    assert bases == ["SmolLM2-135M-Instruct"] * 2
    assert "legacy name of the same model" in page.inner_text("[data-testid=job-table]")
    page.goto(f"{live_server.url}/")
    assert page.locator("[data-testid=job-base]").all_inner_texts() == bases

    # Results files are not data: listed apart, each with its job; its page names the job.
    page.goto(f"{live_server.url}/datasets/")
    assert "compiled_results.csv" not in page.inner_text("#file-table")
    page.click("[data-testid=results-toggle] a")
    row = page.locator("#file-table tr", has_text="compiled_results.csv")
    assert jobs[0].public_id in row.inner_text()
    assert_accessible(page, "results files")
    row.locator("a", has_text="compiled_results.csv").click()
    page.click("[data-testid=results-of]")
    assert page.url.endswith(jobs[0].get_absolute_url())

    # The admin: progress as a percentage, a read-only job without Save, 0 serious/critical.
    page.goto(f"{live_server.url}/admin/")  # the same session: an owner is staff
    assert_accessible(page, "admin index")
    page.goto(f"{live_server.url}/admin/jobs/finetunejob/")
    running = page.locator("#result_list tr", has_text=jobs[1].public_id)
    assert running.locator("td.field-progress_shown").inner_text() == "1%"  # not 0.0130208…
    assert_accessible(page, "admin jobs")
    page.goto(f"{live_server.url}/admin/jobs/finetunejob/{jobs[1].pk}/change/")
    assert "1%" in page.inner_text(".field-progress_shown")
    assert page.locator("input[name=_save], input[name=_continue]").count() == 0
    assert_accessible(page, "admin job")
    for path in ("accounts/apikey/", "accounts/membership/add/", "datasets/file/"):
        page.goto(f"{live_server.url}/admin/{path}")
        assert_accessible(page, f"admin {path}")

    # "An XLSX file", not "A XLSX file", on the upload's mapping step.
    page.goto(f"{live_server.url}/datasets/upload/")
    page.set_input_files("#id_file", str(XLSX))
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r".*/datasets/upload/[\w-]+/$"))
    assert "An XLSX file with the columns" in page.inner_text("main")

    # /favicon.ico is the icon, not a 404 (the admin's pages have no icon link).
    icon = page.request.get(f"{live_server.url}/favicon.ico")
    assert icon.ok and icon.headers["content-type"].startswith("image/svg")
    assert [f for f in failures if "/login/" not in f] == []
