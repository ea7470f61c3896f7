"""Every recipe's data (fast): current, prepared exactly as its page shows, and valid.

For each of the seven recipes: the synthetic generator still writes the committed file, the
`prepare_data` command on the recipe page prints `examples/<name>/prepare_data.txt` (which the
page quotes), and the data file (when it is JSONL) and the files the recipe trains on reach
`processed` through the real validation service.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datasets import services as file_services
from datasets.models import File
from datasets.processing import file_validate
from tests.conftest import Persona
from tests.recipes.support import EXAMPLES, RECIPES, prepare, scratch_checkout


def test_synthetic_data_is_what_the_generator_writes() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("synthetic", EXAMPLES / "synthetic.py")
    assert spec and spec.loader
    synthetic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synthetic)

    rendered = synthetic.render()

    assert set(rendered) == {
        f"{r.name}/{r.data}" for r in RECIPES.values() if r.name != "spam-classification"
    }
    for name, text in rendered.items():
        assert (EXAMPLES / name).read_text(encoding="utf-8") == text, f"{name} is stale"


def test_the_real_spam_data_is_a_slice_of_the_shared_set() -> None:
    from tests.conftest import SHARED_DATA

    ours = (EXAMPLES / "spam-classification" / "spam.jsonl").read_text().splitlines()
    shared = (SHARED_DATA / "sms_spam" / "train.jsonl").read_text().splitlines()

    assert ours == shared[: len(ours)]
    assert {json.loads(line)["completion"] for line in ours} == {" ham", " spam"}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_prepare_data_prints_what_the_recipe_shows(name: str, tmp_path: Path) -> None:
    recipe = RECIPES[name]
    committed = (EXAMPLES / name / "prepare_data.txt").read_text(encoding="utf-8")

    printed = prepare(name, scratch_checkout(tmp_path))

    assert printed == committed
    assert committed.rstrip("\n") in recipe.page()
    assert (tmp_path / "examples" / name / recipe.train).is_file()


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_the_recipe_data_and_training_files_validate(
    name: str, owner: Persona, tmp_path: Path
) -> None:
    recipe = RECIPES[name]
    work = scratch_checkout(tmp_path)
    prepare(name, work)

    # The data file itself too, when it is JSONL (a CSV goes through the browser's mapping).
    raw = [recipe.data] if recipe.data.endswith(".jsonl") else []
    for filename in dict.fromkeys([*raw, recipe.train, *filter(None, [recipe.valid])]):
        path = work / "examples" / name / filename
        file = file_services.file_create(
            organization=owner.org,
            uploaded_by=owner.user,
            filename=filename,
            purpose="fine-tune",
            content=path.read_bytes(),
        )
        file_validate(file_id=file.pk)
        file.refresh_from_db()

        assert file.status == File.Status.PROCESSED, file.status_details
        assert file.format == (File.Format.CHAT if recipe.chat else File.Format.PROMPT_COMPLETION)
        assert file.example_count == len(path.read_text(encoding="utf-8").splitlines())
