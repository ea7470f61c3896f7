"""OpenAI's automatic hyperparameters."""

from __future__ import annotations

import pytest

from engine import TrainingError, resolve_hyperparameters
from engine.spec import auto_rule_for


@pytest.mark.parametrize(
    ("n_examples", "expected"),
    [
        (10, (4, 1, 0.05)),  # at least one example per batch
        (1000, (4, 2, 0.05)),  # 0.2% of 1000
        (5000, (4, 10, 0.1)),
        (40_000, (4, 80, 0.2)),
        (1_000_000, (4, 256, 0.2)),  # capped at 256
    ],
)
def test_resolve_hyperparameters_auto(n_examples: int, expected: tuple[int, int, float]) -> None:
    assert resolve_hyperparameters(n_examples, None, None, None) == expected


def test_resolve_hyperparameters_keeps_explicit_values() -> None:
    assert resolve_hyperparameters(1000, 2, 64, 0.3) == (2, 64, 0.3)


def test_multiplier_follows_the_explicit_batch_size() -> None:
    assert resolve_hyperparameters(1000, None, 128, None) == (4, 128, 0.2)


def test_batch_size_never_exceeds_the_examples() -> None:
    assert resolve_hyperparameters(3, None, 8, None)[1] == 3


def test_invalid_values_are_training_errors() -> None:
    with pytest.raises(TrainingError):
        resolve_hyperparameters(100, 0, None, None)
    with pytest.raises(TrainingError):
        resolve_hyperparameters(100, None, None, -1.0)


@pytest.mark.parametrize(
    ("n_examples", "expected"),
    [
        (3, (10, 3, 0.1531)),  # the batch never exceeds the examples; at most 10 epochs
        (100, (8, 4, 0.1768)),  # below 250, batches of 4: the passes of 100 steps of 8
        (249, (4, 4, 0.1768)),
        (250, (4, 8, 0.25)),  # about 100 steps of 8
        (500, (3, 8, 0.25)),  # at least 3 epochs
        (1000, (3, 16, 0.3536)),  # 16 from 1,000 examples, the multiplier scaled by √2
        (5000, (3, 16, 0.3536)),  # a large set still gains from 3 passes
    ],
)
def test_the_small_rule(n_examples: int, expected: tuple[int, int, float]) -> None:
    assert resolve_hyperparameters(n_examples, None, None, None, rule="small") == expected


@pytest.mark.parametrize(
    ("n_examples", "epochs"),
    [
        (100, 8),  # the rule's own 8 passes (100 steps of 8) are above the floor of 6
        (249, 6),
        (500, 6),  # 3,000 examples
        (750, 4),
        (1000, 3),  # from 1,000 examples the floor of 3 sees 3,000 already
        (5000, 3),
    ],
)
def test_a_selecting_run_sees_3000_examples_in_at_most_6_epochs(
    n_examples: int, epochs: int
) -> None:
    # Best-checkpoint selection keeps an earlier epoch where the last ones overshoot, so a run
    # that selects can afford more passes; only the epochs change.
    plain = resolve_hyperparameters(n_examples, None, None, None, rule="small")
    selecting = resolve_hyperparameters(n_examples, None, None, None, "small", selecting=True)
    assert selecting == (epochs, *plain[1:])
    # Epochs the caller gives, and OpenAI's rules, are left alone.
    assert resolve_hyperparameters(500, 2, None, None, "small", selecting=True)[0] == 2
    assert resolve_hyperparameters(500, None, None, None, "openai", selecting=True)[0] == 4


def test_the_small_rule_follows_explicit_values() -> None:
    # The multiplier follows the batch size given; the epochs, the steps it makes.
    assert resolve_hyperparameters(100, None, 32, None, rule="small") == (10, 32, 0.5)
    assert resolve_hyperparameters(1000, 3, None, 0.1, rule="small") == (3, 16, 0.1)
    # A batch below 8 makes more steps of the same passes, not fewer passes.
    assert resolve_hyperparameters(100, None, 2, None, rule="small") == (8, 2, 0.125)


def test_an_unknown_rule_is_a_training_error() -> None:
    with pytest.raises(TrainingError, match="auto rule"):
        resolve_hyperparameters(100, None, None, None, rule="gpt")


def test_dpo_keeps_openais_rules() -> None:
    assert auto_rule_for("small", "supervised") == "small"
    assert auto_rule_for("small", "dpo") == "openai"
    assert auto_rule_for("openai", "supervised") == "openai"
