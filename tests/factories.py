"""factory_boy factories for the core objects."""

from __future__ import annotations

import factory
from django.contrib.auth.models import User
from factory.django import DjangoModelFactory

from accounts.models import Membership, Organization
from datasets.models import File
from models_app.models import BaseModel


class UserFactory(DjangoModelFactory[User]):
    class Meta:
        model = User
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("correct horse battery")


class OrganizationFactory(DjangoModelFactory[Organization]):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")
    slug = factory.Sequence(lambda n: f"org-{n}")


class MembershipFactory(DjangoModelFactory[Membership]):
    class Meta:
        model = Membership

    organization = factory.SubFactory(OrganizationFactory)
    user = factory.SubFactory(UserFactory)
    role = Membership.Role.MEMBER


class FileFactory(DjangoModelFactory[File]):
    """A processed prompt/completion training file (validation already done)."""

    class Meta:
        model = "datasets.File"

    organization = factory.SubFactory(OrganizationFactory)
    filename = "train.jsonl"
    purpose = "fine-tune"
    status = "processed"
    format = "prompt_completion"
    bytes = 100
    stats = factory.LazyFunction(
        lambda: {"examples": 8, "tokens": {"total": 200, "prompt": 150, "completion": 50}}
    )
    blob = factory.django.FileField(
        filename="train.jsonl", data=b'{"prompt": "a", "completion": " b"}\n'
    )


class BaseModelFactory(DjangoModelFactory[BaseModel]):
    class Meta:
        model = "models_app.BaseModel"
        django_get_or_create = ("name",)

    name = "tiny-llama"
    source = "/nonexistent"
    context_length = 512
