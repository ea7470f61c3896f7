"""engine.train on a tiny random model: losses, metrics file, determinism, checkpoints, hooks."""

from __future__ import annotations

import csv
import math
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from engine import Hooks, LoraSpec, TrainingError, TrainSpec, train
from engine.data import Tokenizing
from engine.metrics import BASE_COLUMNS, VALIDATION_COLUMNS
from engine.models import load_model_and_tokenizer
from tests.engine.conftest import word_rows, write_jsonl


def spec_for(model_dir: Path, train_path: Path, out: Path, **overrides: Any) -> TrainSpec:
    # One thread: tiny matmuls gain nothing from two, and the CI CPU is shared.
    values: dict[str, Any] = {
        "model_source": str(model_dir),
        "train_path": str(train_path),
        "output_dir": str(out),
        "n_epochs": 2,
        "batch_size": 2,
        "learning_rate_multiplier": 1.0,
        "base_learning_rate": 1e-2,
        "num_threads": 1,
    }
    values.update(overrides)
    return TrainSpec(**values)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def adapter_tensors(model_dir: str | Path) -> dict[str, torch.Tensor]:
    directory = Path(model_dir)
    name = "adapter_model.safetensors"
    return load_file(directory / (name if (directory / name).exists() else "model.safetensors"))


class Recorder(Hooks):
    def __init__(self, stop_after: int | None = None) -> None:
        self.events: list[tuple[str, str]] = []
        self.rows: list[dict[str, float]] = []
        self.progress: list[tuple[int, int, int, float | None]] = []
        self.checkpoints: list[Any] = []
        self.stop_after = stop_after
        self.polls_after_stop = 0

    def on_event(self, level: str, message: str) -> None:
        self.events.append((level, message))

    def on_metrics(self, row: dict[str, float]) -> None:
        self.rows.append(row)

    def on_progress(self, step: int, total: int, tokens: int, eta: float | None) -> None:
        self.progress.append((step, total, tokens, eta))

    def on_checkpoint(self, info: Any) -> None:
        self.checkpoints.append(info)

    def should_stop(self) -> bool:
        stop = self.stop_after is not None and len(self.rows) >= self.stop_after
        self.polls_after_stop += stop
        return stop


def test_train_loss_falls(tiny_model_dir: Path, train_file: Path, tmp_path: Path) -> None:
    result = train(spec_for(tiny_model_dir, train_file, tmp_path / "out", n_epochs=6))

    losses = [float(r["training_loss"]) for r in read_rows(result.results_csv)]
    assert result.status == "succeeded"
    assert len(losses) == result.steps == 6 * 4
    assert sum(losses[-4:]) < sum(losses[:4])


def test_train_overfits_and_greedy_decoding_reproduces_completions(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = word_rows(8)
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    spec = spec_for(
        tiny_model_dir,
        data,
        tmp_path / "out",
        method="full",
        n_epochs=60,
        batch_size=8,
        base_learning_rate=3e-3,
        prompt_loss_weight=0.0,
    )

    result = train(spec)

    model, tokenizer = load_model_and_tokenizer(result.model_dir, device="cpu")
    model.eval()
    tokenizing = Tokenizing(tokenizer, 0.0)
    for row in rows:
        ids = torch.tensor([tokenizing.prompt_ids(row["prompt"])])
        with torch.no_grad():
            for _ in range(16):  # plain greedy decoding, no engine.generation involved
                next_id = model(ids).logits[0, -1].argmax()
                if next_id == tokenizer.eos_token_id:
                    break
                ids = torch.cat([ids, next_id.view(1, 1)], 1)
        prompt_len = len(tokenizing.prompt_ids(row["prompt"]))
        assert tokenizer.decode(ids[0, prompt_len:]) == row["completion"]


@pytest.mark.parametrize("prompt_loss_weight", [0.0, 0.01, 0.5])
def test_prompt_loss_weight_changes_the_loss_as_computed_by_hand(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path, prompt_loss_weight: float
) -> None:
    # The first step's training loss is measured before any update, so it must equal
    # sum(w * CE) / sum(w) over the 8 examples computed one by one with a plain forward pass.
    spec = spec_for(
        tiny_model_dir,
        train_file,
        tmp_path / "out",
        n_epochs=1,
        batch_size=8,
        prompt_loss_weight=prompt_loss_weight,
        max_tokens_per_pack=40,  # several packs, so accumulation across packs is exercised
    )
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    tokenizing = Tokenizing(tokenizer, prompt_loss_weight)
    weighted, total = 0.0, 0.0
    with torch.no_grad():
        for row in word_rows(8):
            prompt = tokenizing.prompt_ids(row["prompt"])
            completion = tokenizing.encode(row["completion"]) + [tokenizer.eos_token_id]
            ids = torch.tensor([prompt + completion])
            ce = F.cross_entropy(model(ids).logits[0, :-1], ids[0, 1:], reduction="none")
            weights = torch.tensor(
                [prompt_loss_weight] * (len(prompt) - 1) + [1.0] * len(completion)
            )
            weighted += float((ce * weights).sum())
            total += float(weights.sum())

    result = train(spec)

    first = read_rows(result.results_csv)[0]
    assert float(first["training_loss"]) == pytest.approx(weighted / total, rel=1e-4)


def test_results_csv_has_exactly_the_reference_columns(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    result = train(spec_for(tiny_model_dir, train_file, tmp_path / "out", n_epochs=1))

    with open(result.results_csv, newline="") as handle:
        header = next(csv.reader(handle))
    assert header == BASE_COLUMNS + VALIDATION_COLUMNS
    for row in read_rows(result.results_csv):
        for value in row.values():
            assert value == "" or math.isfinite(float(value))  # numeric cells only


def _labelled_rows(n: int) -> list[dict[str, str]]:
    return [
        {"prompt": f"message number {i} ->", "completion": " spam" if i % 3 == 0 else " ham"}
        for i in range(n)
    ]


def test_binary_classification_metrics_each_epoch(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "train.jsonl", _labelled_rows(8))
    valid = write_jsonl(tmp_path / "valid.jsonl", _labelled_rows(6))
    spec = spec_for(
        tiny_model_dir,
        data,
        tmp_path / "out",
        validation_path=str(valid),
        validation_every_n_steps=3,
        compute_classification_metrics=True,
        classification_positive_class=" spam",
        classification_betas=[0.5, 1, 2],
    )

    result = train(spec)

    rows = read_rows(result.results_csv)
    assert list(rows[0]) == BASE_COLUMNS + VALIDATION_COLUMNS + [
        "classification/accuracy",
        "classification/precision",
        "classification/recall",
        "classification/auroc",
        "classification/auprc",
        "classification/f0.5",
        "classification/f1.0",
        "classification/f2.0",
    ]
    with_classification = [int(r["step"]) for r in rows if r["classification/accuracy"]]
    assert with_classification == [4, 8]  # the last step of each epoch
    with_validation = [int(r["step"]) for r in rows if r["validation_loss"]]
    assert with_validation == [3, 6, 8]  # every 3 steps, and the last step


def test_multiclass_classification_columns(tiny_model_dir: Path, tmp_path: Path) -> None:
    labels = [" red", " green", " blue"]
    rows = [{"prompt": f"colour {i} ->", "completion": labels[i % 3]} for i in range(6)]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    spec = spec_for(
        tiny_model_dir,
        data,
        tmp_path / "out",
        n_epochs=1,
        validation_path=str(data),
        compute_classification_metrics=True,
        classification_n_classes=3,
    )

    result = train(spec)

    last = read_rows(result.results_csv)[-1]
    assert list(last)[-2:] == ["classification/accuracy", "classification/weighted_f1_score"]
    assert 0.0 <= float(last["classification/accuracy"]) <= 1.0


def test_same_seed_gives_the_same_result(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    first = train(spec_for(tiny_model_dir, train_file, tmp_path / "a", seed=7))
    again = train(spec_for(tiny_model_dir, train_file, tmp_path / "b", seed=7))
    other = train(spec_for(tiny_model_dir, train_file, tmp_path / "c", seed=8))

    a, b, c = (adapter_tensors(r.model_dir) for r in (first, again, other))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    losses = [[r["training_loss"] for r in read_rows(x.results_csv)] for x in (first, again)]
    assert losses[0] == losses[1]


def test_should_stop_stops_within_one_step_with_a_checkpoint(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    hooks = Recorder(stop_after=3)

    result = train(spec_for(tiny_model_dir, train_file, tmp_path / "out"), hooks)

    assert result.status == "stopped"
    assert result.steps == 3
    assert hooks.polls_after_stop == 1
    # A resume checkpoint (internal), not a model checkpoint: the API lists epochs only.
    assert result.checkpoints == []
    assert result.resume_checkpoint is not None
    resume = Path(result.resume_checkpoint)
    assert resume == tmp_path / "out" / "resume" / "step-3"
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt", "state.json", "results.csv"):
        assert (resume / name).exists(), name
    assert Path(result.model_dir) == resume / "model"
    assert (resume / "model" / "adapter_model.safetensors").exists()


class Fenced(Recorder):
    """Lost its claim on the job after `after` metrics rows (another attempt took over)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    def should_stop(self) -> bool:
        return not self.may_write()

    def may_write(self) -> bool:
        return len(self.rows) < self.after


def test_a_fenced_out_run_writes_nothing(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"

    result = train(spec_for(tiny_model_dir, train_file, out, n_epochs=3), Fenced(after=5))

    assert result.status == "stopped"
    assert result.resume_checkpoint is None and result.model_dir == ""
    # The epoch-1 checkpoints (step 4) were written while it still owned the job; none after.
    assert sorted(p.name for p in (out / "resume").iterdir()) == ["step-4"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4"]
    assert not (out / "model").exists()


def test_resume_ends_where_an_uninterrupted_run_would(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    valid = write_jsonl(tmp_path / "valid.jsonl", word_rows(5, seed=1))
    common = {"n_epochs": 3, "validation_path": str(valid), "validation_every_n_steps": 3}
    straight = train(spec_for(tiny_model_dir, train_file, tmp_path / "straight", **common))

    # Interrupted mid-epoch 2 (step 6 of 12), then resumed, possibly in another process.
    out = tmp_path / "interrupted"
    stopped = train(spec_for(tiny_model_dir, train_file, out, **common), Recorder(stop_after=6))
    resumed = train(spec_for(tiny_model_dir, train_file, out, resume=True, **common))

    assert stopped.status == "stopped"
    assert resumed.status == "succeeded"
    assert resumed.steps == straight.steps == 12
    a, b = adapter_tensors(straight.model_dir), adapter_tensors(resumed.model_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    rows_a, rows_b = read_rows(straight.results_csv), read_rows(resumed.results_csv)
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a]
    for ra, rb in zip(rows_a, rows_b, strict=True):
        for column in ("training_loss", "validation_loss"):
            if ra[column]:
                assert float(rb[column]) == pytest.approx(float(ra[column]), rel=1e-4)


class Crash(Recorder):
    """Dies at a step like a killed worker: no stop, no last checkpoint."""

    def __init__(self, at_step: int) -> None:
        super().__init__()
        self.at_step = at_step

    def on_metrics(self, row: dict[str, float]) -> None:
        super().on_metrics(row)
        if row["step"] == self.at_step:
            raise KeyboardInterrupt("killed")


def test_a_crash_resumes_mid_epoch_from_the_cadence_checkpoint(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    common = {"n_epochs": 3, "checkpoint_every_steps": 3, "checkpoint_every_seconds": None}
    straight = train(spec_for(tiny_model_dir, train_file, tmp_path / "straight", **common))
    out = tmp_path / "crashed"

    with pytest.raises(KeyboardInterrupt):
        train(spec_for(tiny_model_dir, train_file, out, **common), Crash(at_step=8))
    # Resume points: 3 (cadence), 4 (epoch end), 7 (cadence); the last two are kept.
    assert sorted(p.name for p in (out / "resume").iterdir()) == ["step-4", "step-7"]
    (out / "resume" / ".tmp-step-9-1234").mkdir()  # a writer killed mid-checkpoint
    hooks = Recorder()
    resumed = train(spec_for(tiny_model_dir, train_file, out, resume=True, **common), hooks)

    assert ("info", "Resumed from checkpoint at step 7") in hooks.events
    assert [r["step"] for r in hooks.rows] == list(range(8, 13))  # mid-epoch 2, batch 3 of 4
    assert not (out / "resume" / ".tmp-step-9-1234").exists()
    assert read_rows(resumed.results_csv) == read_rows(straight.results_csv)
    a, b = adapter_tensors(straight.model_dir), adapter_tensors(resumed.model_dir)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert [c.step for c in resumed.checkpoints] == [4, 8, 12]


def test_checkpoint_cadence_by_steps_or_seconds() -> None:
    from engine.cadence import CheckpointCadence

    now = [0.0]
    cadence = CheckpointCadence(every_steps=5, every_seconds=60, clock=lambda: now[0])
    cadence.mark(0)
    assert not cadence.due(4)
    assert cadence.due(5)
    cadence.mark(5)
    now[0] = 59.9
    assert not cadence.due(6)
    now[0] = 60.0
    assert cadence.due(6)  # the clock, before the steps
    assert not CheckpointCadence(None, None).due(10**6)


def test_checkpoints_every_epoch_and_events(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    hooks = Recorder()

    result = train(spec_for(tiny_model_dir, train_file, tmp_path / "out", n_epochs=3), hooks)

    assert [c.step for c in result.checkpoints] == [4, 8, 12]
    assert [c.epoch for c in hooks.checkpoints] == [1, 2, 3]
    messages = [m for _, m in hooks.events]
    assert [m for m in messages if m.startswith("Completed epoch")] == [
        "Completed epoch 1/3",
        "Completed epoch 2/3",
        "Completed epoch 3/3",
    ]
    # Model checkpoints hold the model only; resume checkpoints (the last two, and none at
    # the very end) hold the optimizer state.
    for c in result.checkpoints:
        assert sorted(p.name for p in Path(c.path).iterdir()) == ["COMPLETE", "model"]
    resume = tmp_path / "out" / "resume"
    assert sorted(p.name for p in resume.iterdir()) == ["step-4", "step-8"]
    assert (resume / "step-8" / "optimizer.pt").exists()
    # The epoch checkpoint's files are the resume checkpoint's, linked rather than copied.
    linked = Path(result.checkpoints[1].path) / "model" / "adapter_model.safetensors"
    assert linked.stat().st_ino == (resume / "step-8" / "model" / linked.name).stat().st_ino
    # The first progress report (before the first step) already carries the total.
    assert hooks.progress[0] == (0, 12, 0, None)
    hooks.progress = hooks.progress[1:]
    assert [p[0] for p in hooks.progress] == list(range(1, 13))
    assert all(p[1] == 12 and p[3] is not None for p in hooks.progress)
    assert hooks.progress[-1][2] == result.trained_tokens
    assert len(hooks.rows) == 12
    assert result.hyperparameters == {
        "n_epochs": 3,
        "batch_size": 2,
        "learning_rate_multiplier": 1.0,
        "prompt_loss_weight": 0.01,
    }
    assert (Path(result.model_dir) / "adapter_config.json").exists()


def test_continue_from_keeps_training_an_adapter(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    first = train(spec_for(tiny_model_dir, train_file, tmp_path / "first", n_epochs=6))

    fresh = train(spec_for(tiny_model_dir, train_file, tmp_path / "fresh", n_epochs=1))
    continued = train(
        spec_for(
            tiny_model_dir,
            train_file,
            tmp_path / "continued",
            n_epochs=1,
            continue_from=first.model_dir,
        )
    )

    # Same seed, same first batch: only the starting adapter differs.
    fresh_loss = float(read_rows(fresh.results_csv)[0]["training_loss"])
    continued_loss = float(read_rows(continued.results_csv)[0]["training_loss"])
    assert continued_loss < fresh_loss


def test_full_fine_tuning_writes_a_model_directory(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    result = train(spec_for(tiny_model_dir, train_file, tmp_path / "out", method="full"))

    model_dir = Path(result.model_dir)
    assert (model_dir / "config.json").exists()
    assert (model_dir / "model.safetensors").exists()
    assert (model_dir / "tokenizer.json").exists()


def test_too_long_examples_are_reported(tiny_model_dir: Path, tmp_path: Path) -> None:
    rows = word_rows(6) + [{"prompt": "word " * 200, "completion": " end"}]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    hooks = Recorder()

    result = train(
        spec_for(
            tiny_model_dir, data, tmp_path / "out", n_epochs=1, max_length=64, too_long="drop"
        ),
        hooks,
    )

    assert ("warn", "Dropped 1 training examples longer than 64 tokens") in hooks.events
    assert result.steps == 3  # 6 examples left, batch size 2


def test_bad_training_data_raises_a_readable_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"\n')

    with pytest.raises(TrainingError, match="Line 2 of train.jsonl"):
        train(spec_for(tiny_model_dir, data, tmp_path / "out"))


def test_lora_settings_are_applied(tiny_model_dir: Path, train_file: Path, tmp_path: Path) -> None:
    lora = LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj"])

    result = train(spec_for(tiny_model_dir, train_file, tmp_path / "out", n_epochs=1, lora=lora))

    tensors = adapter_tensors(result.model_dir)
    assert tensors
    assert all("q_proj" in k or "v_proj" in k for k in tensors)
    assert all(t.shape[0] == 4 for k, t in tensors.items() if "lora_A" in k)


def test_lora_targets_the_model_lacks_are_a_readable_error(
    tiny_model_dir: Path, train_file: Path, tmp_path: Path
) -> None:
    lora = LoraSpec(target_modules=["query_key_value"])  # another architecture's name

    with pytest.raises(TrainingError, match="The LoRA settings do not fit this model"):
        train(spec_for(tiny_model_dir, train_file, tmp_path / "out", n_epochs=1, lora=lora))


def test_evaluate_classification_reproduces_the_results_file(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from engine.trainer import evaluate_classification

    data = write_jsonl(tmp_path / "train.jsonl", _labelled_rows(8))
    valid = write_jsonl(tmp_path / "valid.jsonl", _labelled_rows(6))
    result = train(
        spec_for(
            tiny_model_dir,
            data,
            tmp_path / "out",
            n_epochs=1,
            validation_path=str(valid),
            compute_classification_metrics=True,
            classification_positive_class=" spam",
        )
    )

    scores = evaluate_classification(
        str(tiny_model_dir),
        str(valid),
        adapter_dir=result.model_dir,
        positive_class=" spam",
        device="cpu",
        train_path=str(data),
    )

    last = read_rows(result.results_csv)[-1]
    for key, value in scores.items():
        assert float(last[key]) == pytest.approx(value, abs=1e-5), key


def _tiny_lora_model(model_dir: Path, **lora: Any) -> tuple[Any, Any]:
    """The tiny model with rank-4 LoRA on every linear layer, seeded: (causal LM, peft model)."""
    from peft import LoraConfig, get_peft_model

    from engine.trainer import ATTENTION, register_packed_attention

    register_packed_attention()
    torch.manual_seed(0)
    causal_lm, _ = load_model_and_tokenizer(model_dir, device="cpu", attn_implementation=ATTENTION)
    return causal_lm, get_peft_model(
        causal_lm, LoraConfig(r=4, target_modules="all-linear", **lora)
    )


def test_bf16_lora_preparation_computes_what_autocast_computes(tiny_model_dir: Path) -> None:
    """`prepare_bf16_lora` only removes casts: its forward pass equals plain autocast's."""
    from engine.trainer import prepare_bf16_lora

    ids = torch.tensor([[5, 9, 14, 3, 22, 7, 11, 4]])
    outputs = []
    for prepared in (False, True):
        causal_lm, model = _tiny_lora_model(tiny_model_dir)
        head = causal_lm.get_output_embeddings()
        if prepared:
            head = prepare_bf16_lora(causal_lm, head)
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
            hidden = causal_lm.model(input_ids=ids, use_cache=False).last_hidden_state
            outputs.append(head(hidden).float())
        trainable = {p.dtype for p in model.parameters() if p.requires_grad}
        frozen_linear = {
            m.weight.dtype
            for m in causal_lm.modules()
            if isinstance(m, torch.nn.Linear)
            and not m.weight.requires_grad
            and m is not causal_lm.get_output_embeddings()  # tied to the fp32 embedding
        }
    assert torch.equal(outputs[0], outputs[1])
    assert trainable == {torch.float32}  # the optimizer still updates fp32 LoRA weights
    assert frozen_linear == {torch.bfloat16}
    assert causal_lm.get_input_embeddings().weight.dtype == torch.float32


@pytest.mark.parametrize("bf16", [False, True])
def test_lean_lora_forward_matches_peft(tiny_model_dir: Path, bf16: bool) -> None:
    """engine.lora's forward computes peft's function: same outputs, same LoRA gradients, and
    peft's own path (here: the adapter disabled) where it does not apply."""
    from engine.lora import use_lean_forward
    from engine.trainer import prepare_bf16_lora

    ids = torch.tensor([[5, 9, 14, 3, 22, 7, 11, 4]])
    results = []
    for lean in (False, True):
        causal_lm, model = _tiny_lora_model(tiny_model_dir, lora_alpha=8)
        for name, param in model.named_parameters():
            if "lora_B" in name:  # peft starts B at zero, which would hide B's path
                torch.nn.init.normal_(param, std=0.1)
        if lean:
            assert use_lean_forward(model) == 7 * causal_lm.config.num_hidden_layers
        head = causal_lm.get_output_embeddings()
        if bf16:
            head = prepare_bf16_lora(causal_lm, head)
        context = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
        with context:
            hidden = causal_lm.model(input_ids=ids, use_cache=False).last_hidden_state
            logits = head(hidden).float()
        logits.logsumexp(-1).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        with model.disable_adapter(), torch.no_grad(), context:
            plain = head(causal_lm.model(input_ids=ids, use_cache=False).last_hidden_state)
        results.append((logits.detach(), grads, plain.float()))
    (peft_out, peft_grads, peft_plain), (lean_out, lean_grads, lean_plain) = results
    tolerance = 2e-2 if bf16 else 1e-5
    torch.testing.assert_close(lean_out, peft_out, atol=tolerance, rtol=tolerance)
    assert lean_grads.keys() == peft_grads.keys()
    for name, grad in peft_grads.items():
        torch.testing.assert_close(lean_grads[name], grad, atol=tolerance, rtol=tolerance)
    assert torch.equal(lean_plain, peft_plain)
