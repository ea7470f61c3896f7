"""Fixtures for inference tests: a tiny random base model, LoRA adapters and registry rows.

The tiny model and its adapters are built once per session (about a second); each test gets its
own copies of the adapters under DATA_DIR/models, so deleting one never affects another test.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from django.conf import settings

from accounts.models import Organization
from models_app.files import exports_dir
from models_app.models import BaseModel, FineTunedModel
from playground.backends import reset_backends

TINY_BASE = "tiny-base"
TINY_ALIAS = "tiny-alias"


@dataclass(frozen=True)
class TinyDirs:
    base: Path
    plain_base: Path  # the same kind of model without a chat template
    adapter_a: Path
    adapter_b: Path


def _make_adapter(base: Path, out: Path, seed: int) -> Path:
    from peft import LoraConfig, get_peft_model

    from engine.models import load_model_and_tokenizer

    model, _ = load_model_and_tokenizer(base)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # Random (not identity) LoRA weights, so each adapter visibly changes the output.
        config = LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=["q_proj", "v_proj", "o_proj"],
            init_lora_weights=False,
        )
        get_peft_model(model, config).save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> TinyDirs:
    from engine.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    base = build_tiny_model(root / "base", seed=0)
    plain = build_tiny_model(root / "plain", seed=0, chat_template=False)
    return TinyDirs(
        base=base,
        plain_base=plain,
        adapter_a=_make_adapter(base, root / "adapter-a", seed=1),
        adapter_b=_make_adapter(base, root / "adapter-b", seed=2),
    )


@pytest.fixture
def inference_base(db: None, tiny_dirs: TinyDirs, inference: str) -> BaseModel:
    return BaseModel.objects.create(
        name=TINY_BASE,
        display_name="Tiny test model",
        source=str(tiny_dirs.base),
        aliases=[TINY_ALIAS],
        context_length=512,
        has_chat_template=True,
    )


MakeFineTune = Callable[..., FineTunedModel]


@pytest.fixture
def make_fine_tune(inference_base: BaseModel, tiny_dirs: TinyDirs) -> Iterator[MakeFineTune]:
    """make_fine_tune(org, name, adapter="a"|"b") copies an adapter into DATA_DIR/models."""
    created: list[Path] = []
    models: list[FineTunedModel] = []

    def make(org: Organization, name: str, adapter: str = "a", **fields: Any) -> FineTunedModel:
        source = tiny_dirs.adapter_a if adapter == "a" else tiny_dirs.adapter_b
        target = Path(settings.DATA_DIR) / "models" / f"test-{uuid.uuid4().hex[:12]}"
        shutil.copytree(source, target)
        created.append(target)
        model = FineTunedModel.objects.create(
            name=name, organization=org, base=inference_base, artifact_dir=str(target), **fields
        )
        models.append(model)
        return model

    yield make
    for path in created:
        shutil.rmtree(path, ignore_errors=True)
    for model in models:
        shutil.rmtree(exports_dir(model), ignore_errors=True)


@pytest.fixture
def fresh_backend() -> Iterator[None]:
    """A new HTTP client for the inference service (it remembers which adapters it loaded)."""
    reset_backends()
    yield
    reset_backends()


def ft_name(org: Organization, suffix: str = "") -> str:
    """A legacy-style fine-tune name (reference §3.6)."""
    tail = f":{suffix}" if suffix else ""
    return f"{TINY_BASE}:ft-{org.slug}{tail}-2024-01-02-03-04-05"
