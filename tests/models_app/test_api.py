"""/v1/models: list, retrieve (raw and %3A-encoded ':') and owner-only deletion."""

from __future__ import annotations

import json
from pathlib import Path

from pytest_django import DjangoCaptureOnCommitCallbacks

from models_app.models import BaseModel, FineTunedModel
from tests.accounts.test_api_auth import assert_envelope
from tests.conftest import Persona
from tests.inference import health
from tests.playground.support import TINY_BASE, MakeFineTune, ft_name


def test_list_holds_the_orgs_fine_tunes_and_all_bases(
    owner: Persona, outsider: Persona, make_fine_tune: MakeFineTune
) -> None:
    ours = make_fine_tune(owner.org, ft_name(owner.org))
    theirs = make_fine_tune(outsider.org, ft_name(outsider.org))

    body = owner.api().get("/v1/models").json()

    by_id = {m["id"]: m for m in body["data"]}
    assert ours.name in by_id
    assert TINY_BASE in by_id
    assert theirs.name not in by_id
    assert by_id[ours.name]["owned_by"] == owner.org.slug
    assert body["has_more"] is False


def test_retrieve_accepts_raw_and_encoded_colons(
    owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    client = owner.api()

    raw = client.get(f"/v1/models/{model.name}")
    encoded = client.get("/v1/models/" + model.name.replace(":", "%3A"))

    assert raw.status_code == encoded.status_code == 200
    assert raw.json() == encoded.json()
    assert raw.json()["id"] == model.name


def test_retrieve_unknown_or_another_orgs_is_404(
    owner: Persona, outsider: Persona, make_fine_tune: MakeFineTune
) -> None:
    theirs = make_fine_tune(outsider.org, ft_name(outsider.org))

    assert_envelope(owner.api().get(f"/v1/models/{theirs.name}"), 404, "model_not_found")
    assert_envelope(owner.api().get("/v1/models/nope"), 404, "model_not_found")


def test_member_cannot_delete(
    member: Persona, owner: Persona, make_fine_tune: MakeFineTune
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))

    response = member.api().delete(f"/v1/models/{model.name}")

    error = assert_envelope(response, 403)
    assert error["type"] == "permission_error"
    assert FineTunedModel.objects.get(pk=model.pk).deleted_at is None
    assert Path(model.artifact_dir).is_dir()


def test_owner_deletes_and_the_model_stops_serving_at_once(
    owner: Persona,
    make_fine_tune: MakeFineTune,
    inference: str,
    django_capture_on_commit_callbacks: DjangoCaptureOnCommitCallbacks,
) -> None:
    model = make_fine_tune(owner.org, ft_name(owner.org))
    client = owner.api()
    completion = {"model": model.name, "prompt": "x", "max_tokens": 2}
    assert (
        client.post("/v1/completions", completion, content_type="application/json").status_code
        == 200
    )
    adapter = str(Path(model.artifact_dir).resolve())
    assert any(adapter in paths for paths in health(inference).adapters.values())

    with django_capture_on_commit_callbacks(execute=True):
        # 0.28 sends the ':' percent-encoded.
        response = client.delete("/v1/models/" + model.name.replace(":", "%3A"))

    assert response.status_code == 200
    assert response.json() == {"id": model.name, "object": "model", "deleted": True}
    assert not Path(model.artifact_dir).exists()
    assert not any(adapter in paths for paths in health(inference).adapters.values())
    after = client.post("/v1/completions", json.dumps(completion), content_type="application/json")
    assert_envelope(after, 404, "model_not_found")
    assert_envelope(client.get(f"/v1/models/{model.name}"), 404, "model_not_found")


def test_deleting_another_orgs_model_is_404(
    owner: Persona, outsider: Persona, make_fine_tune: MakeFineTune
) -> None:
    theirs = make_fine_tune(outsider.org, ft_name(outsider.org))

    assert_envelope(owner.api().delete(f"/v1/models/{theirs.name}"), 404, "model_not_found")
    assert Path(theirs.artifact_dir).is_dir()


def test_base_models_cannot_be_deleted(owner: Persona, inference_base: BaseModel) -> None:
    response = owner.api().delete(f"/v1/models/{TINY_BASE}")

    assert assert_envelope(response, 400)["param"] == "model"
    assert BaseModel.objects.filter(name=TINY_BASE).exists()
