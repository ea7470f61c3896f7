"""The training loop: LoRA or full fine-tuning of a causal LM on packed, padding-free batches.

How a step runs. A step is `batch_size` examples (OpenAI's definition, which the results file's
`elapsed_examples` counts). Those examples are packed into rows of at most `max_tokens_per_pack`
tokens; each row goes through the model once with positions restarting per example and an
attention that never crosses example boundaries (`_packed_attention`), so no padding is ever
computed. The loss is the weighted mean over the step's loss-bearing tokens,
sum(w * CE) / sum(w), accumulated over the rows, so a step's gradient does not depend on how
its examples were split into rows. The output head runs only at positions that carry loss:
with prompt_loss_weight 0 that skips the 49k-wide vocabulary projection on every prompt token.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from engine import checkpoints as ckpt
from engine import dpo, free_text, fsdp, metrics
from engine.cadence import CheckpointCadence
from engine.data import (
    Example,
    Pack,
    Pair,
    Tokenizing,
    load_examples,
    load_pairs,
    make_packs,
    make_pair_packs,
    prompt_pack,
)
from engine.distributed import World
from engine.lora import use_lean_forward
from engine.models import (
    auto_threads,
    context_length,
    load_model_and_tokenizer,
    pick_device,
    resolve_model_source,
    use_bf16,
)
from engine.selection import Evaluation, Selection, scored_on
from engine.spec import (
    DEFAULT_BASE_LEARNING_RATE,
    CheckpointInfo,
    Hooks,
    TrainingError,
    TrainResult,
    TrainSpec,
    auto_rule_for,
    resolve_hyperparameters,
)

ATTENTION = "tunery_packed"
RESULTS_FILE = "compiled_results.csv"

# Tokens per forward pass. On CPU, rows of ~1-2k tokens already run the matmuls near peak and
# keep activations small; a GPU needs far bigger rows to be busy.
DEFAULT_PACK_TOKENS = {"cpu": 2048, "cuda": 16384}
# With bf16 autocast on CPU, oneDNN builds and caches kernels per input shape: a reference run
# with unbucketed shapes grew from 2 to 5.7 GB in 75 steps. Rounding rows up (engine.data's
# padded_length: to a multiple of this, or of 1/16 of the next power of two) keeps the number of
# shapes small. In fp32 (and on CUDA) measured RSS stays flat without it.
BF16_CPU_BUCKET = 16
# Positions scored by the output head at once. Without autograd (validation, classification)
# this bounds the [positions, vocab] logits in memory; with it, the softmax buffers of every
# chunk are kept for backward anyway, which is why packs are capped in tokens.
HEAD_CHUNK = 4096

T = TypeVar("T")
P = TypeVar("P")


# --------------------------------------------------------------------------------------------
# Attention over packed rows


def _cuda_varlen() -> Any:
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


# The flash-attention varlen kernel, once it has proven to agree with the per-example SDPA path
# on this machine (checked on the first call); None where it is missing or disagrees.
_VARLEN: dict[str, Any] = {"fn": None, "checked": False}


def _sdpa_per_example(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lens: list[int],
    scaling: float | None,
) -> torch.Tensor:
    gqa = key.shape[1] != query.shape[1]
    if len(lens) == 1:
        out = F.scaled_dot_product_attention(
            query, key, value, is_causal=True, scale=scaling, enable_gqa=gqa
        )
    else:
        parts = [
            F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling, enable_gqa=gqa)
            for q, k, v in zip(
                torch.split(query, lens, 2),
                torch.split(key, lens, 2),
                torch.split(value, lens, 2),
                strict=True,
            )
        ]
        out = torch.cat(parts, 2)
    return out.transpose(1, 2)  # [1, L, heads, dim]


def _varlen(
    fn: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    lens: list[int],
    cu: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    if cu is None:
        cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32, device=query.device)
    out: torch.Tensor = fn(
        query[0].transpose(0, 1),  # [L, heads, dim]
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        cu,
        cu,
        max(lens),
        max(lens),
        scale=scaling,
        window_size=(-1, 0),  # causal
        enable_gqa=key.shape[1] != query.shape[1],
    )
    return out.unsqueeze(0)


def _half_dtype(query: torch.Tensor) -> torch.dtype | None:
    # Under autocast the rotary embedding promotes q and k back to fp32 (its cos/sin are fp32),
    # while flash attention only takes half precision: use autocast's dtype, as SDPA would.
    if torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return query.dtype if query.dtype in (torch.float16, torch.bfloat16) else None


def _packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal attention inside each example of a packed row ([1, heads, L, dim] tensors).

    On CUDA this is one flash-attention varlen call; elsewhere one SDPA call per example, which
    costs a few dozen small kernel launches but computes exactly the block-diagonal attention
    (a dense L x L mask would spend most of its time on blocks that are masked out).
    """
    lens: list[int] | None = kwargs.get("tunery_seq_lens")
    if lens is None:  # an ordinary, unpacked call (e.g. generate()): plain causal attention
        lens = [query.shape[2]]
    dtype = _half_dtype(query) if query.is_cuda else None
    if dtype is not None and (_VARLEN["fn"] is not None or not _VARLEN["checked"]):
        q, k, v = query.to(dtype), key.to(dtype), value.to(dtype)
        cu = kwargs.get("tunery_cu_seq_lens")
        if not _VARLEN["checked"]:
            _VARLEN["checked"] = True
            fn = _cuda_varlen()
            try:
                with torch.no_grad():
                    trial = _varlen(fn, q, k, v, lens, cu, scaling) if fn else None
                    reference = _sdpa_per_example(q, k, v, lens, scaling)
                if trial is not None and torch.allclose(
                    trial.float(), reference.float(), atol=2e-2, rtol=2e-2
                ):
                    _VARLEN["fn"] = fn
            except (RuntimeError, TypeError, NotImplementedError):
                pass  # e.g. a GPU without flash attention: stay on the SDPA path
        if _VARLEN["fn"] is not None:
            return _varlen(_VARLEN["fn"], q, k, v, lens, cu, scaling), None
    if torch.is_autocast_enabled("cpu"):
        # CPU bf16 attention kernels are 2-6x slower than fp32 ones at these sizes (dozens to
        # hundreds of tokens per example, measured on an AVX512-BF16 EPYC), and the attention
        # matmuls are tiny next to the projections: compute it in fp32.
        with torch.autocast("cpu", enabled=False):
            out = _sdpa_per_example(query.float(), key.float(), value.float(), lens, scaling)
        return out.contiguous(), None
    return _sdpa_per_example(query, key, value, lens, scaling).contiguous(), None


def _no_mask(*args: Any, **kwargs: Any) -> None:
    # Packed rows never need a mask tensor: `_packed_attention` isolates examples itself.
    return None


def register_packed_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(ATTENTION, _packed_attention)
    AttentionMaskInterface.register(ATTENTION, _no_mask)


# --------------------------------------------------------------------------------------------
# Model set-up


def _autocast(device: str, bf16: bool) -> AbstractContextManager[Any]:
    if not bf16:
        return nullcontext()
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)


class PackedLM(torch.nn.Module):
    """The packed forward as one module call: the transformer body over a packed row, then the
    output head at the positions `source` picks, HEAD_CHUNK of them at a time, each chunk's
    logits handed to `score` at once (so without autograd only one chunk's [positions, vocab]
    logits exist). Returns the scores, in order.

    One call encloses every use of the embedding, the final norm and the output head (tied in
    many models), which is what FSDP needs of its root module (engine.fsdp): the trainer calls
    the body and the head, never the causal LM's own forward."""

    def __init__(self, core: Any, head: torch.nn.Module, device: str, bf16: bool) -> None:
        super().__init__()
        self.core, self.head = core, head
        self.device, self.bf16 = device, bf16

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        lens: list[int],
        source: torch.Tensor,
        score: Callable[[slice, torch.Tensor], T],
    ) -> list[T]:
        with _autocast(self.device, self.bf16):
            hidden = _hidden(self.core, self.device, input_ids, position_ids, lens)
        scores: list[T] = []
        for start in range(0, source.numel(), HEAD_CHUNK):
            part = slice(start, start + HEAD_CHUNK)
            with _autocast(self.device, self.bf16):
                logits = self.head(hidden[source[part]])
            scores.append(score(part, logits))
        return scores


@dataclass
class Runtime:
    model: Any  # the trainable module (a PeftModel for LoRA)
    core: Any  # the transformer body: hidden states out, no output head
    head: torch.nn.Module  # the output projection
    tokenizer: Any
    device: str
    bf16: bool
    model_dir: Path
    method: str
    packed: PackedLM = field(init=False)  # every forward goes through it

    def __post_init__(self) -> None:
        self.packed = PackedLM(self.core, self.head, self.device, self.bf16)

    def autocast(self) -> AbstractContextManager[Any]:
        return _autocast(self.device, self.bf16)


def _split_model(causal_lm: Any) -> tuple[Any, torch.nn.Linear]:
    core = getattr(causal_lm, causal_lm.base_model_prefix)
    head = causal_lm.get_output_embeddings()
    if head is None:
        raise TrainingError("This model has no language-modelling head")
    return core, head


def _is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def build_runtime(
    spec: TrainSpec,
    model_dir: Path,
    device: str,
    resume_from: Path | None,
    shard_over: World | None = None,
) -> Runtime:
    """Load the base model and make it trainable: a fresh or loaded LoRA adapter, or full weights.

    `resume_from` is a checkpoint's model dir; otherwise `spec.continue_from` if given. With
    `shard_over`, the model is loaded on the CPU and sharded across that world's ranks onto
    `device` (engine.fsdp), so no device ever holds all of it.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    register_packed_attention()
    start = resume_from or (Path(spec.continue_from) if spec.continue_from else None)
    if start is not None and not start.is_dir():
        raise TrainingError(f"Model to continue from not found: {start}")
    load_dir = model_dir
    if spec.method == "full" and start is not None:
        if _is_adapter_dir(start):
            raise TrainingError("Full fine-tuning cannot continue from a LoRA adapter")
        load_dir = start
    causal_lm, tokenizer = load_model_and_tokenizer(
        load_dir, device="cpu" if shard_over else device, attn_implementation=ATTENTION
    )
    causal_lm.config.use_cache = False
    if spec.method == "full":
        model = causal_lm
        model.requires_grad_(True)
    elif start is not None:
        if not _is_adapter_dir(start):
            raise TrainingError(f"{start} is not a LoRA adapter directory")
        model = PeftModel.from_pretrained(causal_lm, str(start), is_trainable=True)
    else:
        config = LoraConfig(
            r=spec.lora.r,
            lora_alpha=spec.lora.alpha,
            lora_dropout=spec.lora.dropout,
            target_modules=spec.lora.target_modules,
            task_type="CAUSAL_LM",
        )
        try:
            model = get_peft_model(causal_lm, config)
        except ValueError as error:  # target modules this model does not have, mostly
            raise TrainingError(f"The LoRA settings do not fit this model: {error}") from error
    core, head = _split_model(causal_lm)
    bf16 = use_bf16(device) if spec.bf16 is None else spec.bf16
    if spec.method == "lora":
        use_lean_forward(model)
        if bf16:
            head = prepare_bf16_lora(causal_lm, head)
    runtime = Runtime(
        model=model,
        core=core,
        head=head,
        tokenizer=tokenizer,
        device=device,
        bf16=bf16,
        model_dir=model_dir,
        method=spec.method,
    )
    if shard_over is not None:
        fsdp.shard(runtime.packed, causal_lm, shard_over, device)
    return runtime


def prepare_bf16_lora(causal_lm: Any, head: torch.nn.Linear) -> torch.nn.Linear:
    """Cut the casts autocast makes in a LoRA step; return the output head to use.

    Numerically this computes what plain autocast computes (the same roundings to bf16), with
    ~3000 fewer casts per step:
    - Autocast re-casts every weight that does not require grad on every call (its cast cache
      keeps only trainable leaves), so the frozen base weights are stored in bf16 once. The
      embedding stays fp32 (it feeds the fp32 residual stream); a head that shares it becomes a
      bf16 copy.
    - Each pre-projection norm's output was cast to bf16 separately by every projection reading
      it (q, k, v and their LoRA branches), and peft cast it back to fp32 for the LoRA branch
      first: cast it once, and let LoRA take it as it is (autocast runs LoRA's matmuls in bf16
      either way).
    """
    embedding = causal_lm.get_input_embeddings().weight
    for name, module in causal_lm.named_modules():
        frozen = isinstance(module, torch.nn.Linear) and not module.weight.requires_grad
        if frozen and module is not head:
            module.to(torch.bfloat16)
        if hasattr(module, "cast_input_dtype_enabled") or hasattr(module, "lora_A"):
            module.cast_input_dtype_enabled = False
        if name.endswith(PRE_PROJECTION_NORMS):
            module.register_forward_hook(_to_bf16_under_autocast)
    if head.weight.requires_grad:
        return head
    if head.weight is embedding:
        copy = torch.nn.Linear(head.in_features, head.out_features, bias=False)
        copy.weight = torch.nn.Parameter(embedding.detach().to(torch.bfloat16), False)
        return copy.to(embedding.device)
    return head.to(torch.bfloat16)


# Norms whose output feeds only linear projections, in Llama-style decoders (Llama, Mistral,
# Qwen, SmolLM...); other architectures just keep autocast's per-projection casts.
PRE_PROJECTION_NORMS = ("input_layernorm", "post_attention_layernorm")


def _to_bf16_under_autocast(module: Any, args: Any, output: torch.Tensor) -> torch.Tensor:
    if torch.is_autocast_enabled(output.device.type) and output.dtype == torch.float32:
        return output.to(torch.bfloat16)
    return output


def save_trained(
    runtime: Runtime,
    out_dir: Path,
    model_source: str,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the adapter (LoRA) or the full model, plus the tokenizer, to `out_dir`. `state`: the
    weights to write instead of the model's own (a sharded run's, gathered: engine.fsdp)."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    if state is None:
        runtime.model.save_pretrained(out_dir)
    else:
        runtime.model.save_pretrained(out_dir, state_dict=state)
    runtime.tokenizer.save_pretrained(out_dir)
    config_path = out_dir / "adapter_config.json"
    if config_path.is_file():
        # Record the source the user named, not the cache path it resolved to on this machine.
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = model_source
        config_path.write_text(json.dumps(config, indent=2))
    return out_dir


# --------------------------------------------------------------------------------------------
# Forward passes


@dataclass
class BatchStats:
    """Sums over one step's (or one validation batch's) examples."""

    weighted_loss: float = 0.0
    weight: float = 0.0
    target_tokens: int = 0
    correct_tokens: int = 0
    sequences: int = 0
    correct_sequences: int = 0
    tokens: int = 0
    examples: int = 0

    def row(self, prefix: str) -> dict[str, float]:
        nan = math.nan
        return {
            f"{prefix}_loss": self.weighted_loss / self.weight if self.weight else nan,
            f"{prefix}_sequence_accuracy": (
                self.correct_sequences / self.sequences if self.sequences else nan
            ),
            f"{prefix}_token_accuracy": (
                self.correct_tokens / self.target_tokens if self.target_tokens else nan
            ),
        }


def _hidden(
    core: Any, device: str, input_ids: torch.Tensor, position_ids: torch.Tensor, lens: list[int]
) -> torch.Tensor:
    kwargs: dict[str, Any] = {"tunery_seq_lens": lens}
    if device.startswith("cuda"):
        cu = torch.tensor([0, *np.cumsum(lens)], dtype=torch.int32)
        kwargs["tunery_cu_seq_lens"] = cu.to(device, non_blocking=True)
    out = core(
        input_ids=input_ids.to(device, non_blocking=True),
        position_ids=position_ids.to(device, non_blocking=True),
        use_cache=False,
        **kwargs,
    )
    hidden: torch.Tensor = out.last_hidden_state[0]
    return hidden


def _pack_loss(
    runtime: Runtime, pack: Pack, total_weight: float, stats: BatchStats
) -> torch.Tensor | None:
    """Forward one pack; return its share of the step loss (sum(w*CE) / total_weight) and add its
    counts to `stats`. None if nothing in the pack carries loss."""
    device = runtime.device
    stats.tokens += pack.n_tokens
    stats.examples += pack.n_examples
    if pack.labels.numel() == 0:
        return None
    labels = pack.labels.to(device)
    weights = pack.weights.to(device)
    target = pack.target.to(device)

    def score(part: slice, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = logits.float()  # the softmax in fp32 whatever the matmul precision
        ce = F.cross_entropy(logits, labels[part], reduction="none")
        return (ce * weights[part]).sum(), logits.detach().argmax(-1) == labels[part]

    scores = runtime.packed(
        pack.input_ids, pack.position_ids, pack.seq_lens, pack.source.to(device), score
    )
    loss_sum = torch.stack([piece for piece, _ in scores]).sum()
    correct = torch.cat([right for _, right in scores])

    stats.weighted_loss += float(loss_sum.detach())
    stats.weight += float(pack.weights.sum())
    on_target = correct[target].cpu()
    stats.target_tokens += int(pack.target.sum())
    stats.correct_tokens += int(on_target.sum())
    # A sequence is right when every one of its target tokens is.
    owners = pack.example[pack.target]
    if owners.numel():
        wrong = torch.zeros(pack.n_examples, dtype=torch.long)
        wrong.index_add_(0, owners, (~on_target).long())
        has_target = torch.zeros(pack.n_examples, dtype=torch.bool)
        has_target[owners] = True
        stats.sequences += int(has_target.sum())
        stats.correct_sequences += int((has_target & (wrong == 0)).sum())
    return loss_sum / total_weight


def _token_logps(runtime: Runtime, pack: Pack) -> torch.Tensor:
    """Log-probabilities (fp32) of a pack's loss-bearing tokens under the model as it is, with
    autograd when it is on: what DPO sums per sequence (engine.dpo)."""
    device = runtime.device
    labels = pack.labels.to(device)

    def score(part: slice, logits: torch.Tensor) -> torch.Tensor:
        return -F.cross_entropy(logits.float(), labels[part], reduction="none")

    source = pack.source.to(device)
    return torch.cat(
        runtime.packed(pack.input_ids, pack.position_ids, pack.seq_lens, source, score)
    )


def _null_loss(runtime: Runtime) -> torch.Tensor:
    """A zero loss through every parameter (one token, scored with weight 0). Under FSDP every
    forward and backward is a collective, so a rank with no (loss-bearing) pack left runs this
    while the others run their last packs (engine.fsdp)."""
    one = torch.zeros((1, 1), dtype=torch.long)
    source = torch.zeros(1, dtype=torch.long, device=runtime.device)

    def score(part: slice, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sum() * 0.0

    loss: torch.Tensor = runtime.packed(one, one, [1], source, score)[0]
    return loss


def _batch_weight(examples: Sequence[Example]) -> float:
    return float(sum(w for e in examples for w in e.weights[1:]))


# --------------------------------------------------------------------------------------------
# Classification metrics


@dataclass
class Classification:
    kind: str  # "binary" | "multiclass"
    labels: list[str]
    label_tokens: list[int]  # first token of each label
    positive: int | None  # index of the positive label (binary)
    prompts: list[list[int]] = field(default_factory=list)
    truth: list[int] = field(default_factory=list)
    betas: list[float] = field(default_factory=lambda: [1.0])


# A closed label set (for ranking checkpoints, below) has at most this many labels.
AUTO_LABELS_MAX = 50


def closed_label_set(train: Sequence[Example], validation: Sequence[Example]) -> list[str] | None:
    """The labels, when the data is a classification task: every completion is one of 2 to
    AUTO_LABELS_MAX labels, seen 4 times each in training on average, and every validation
    completion is one of the training ones. None for generation, extraction or chat data, whose
    completions are mostly distinct."""
    labels = {e.completion for e in train}
    if not 2 <= len(labels) <= AUTO_LABELS_MAX or len(train) < 4 * len(labels):
        return None
    if any(e.completion not in labels for e in validation):
        return None
    return sorted(labels)


def setup_classification(
    spec: TrainSpec,
    tokenizing: Tokenizing,
    train: Sequence[Example],
    validation: Sequence[Example],
    hooks: Hooks,
    *,
    for_selection: bool = False,
) -> Classification | None:
    """Classification metrics as the job asked for them; or, with `for_selection` (the job
    selects its best checkpoint) and data that is a closed set of labels, multiclass metrics the
    job did not ask for: on such data the validation loss can bottom out epochs before the
    accuracy does (stdlib_module at 500 examples: the loss picked epoch 2 of 4, 87% on the test
    split, where the last epoch scored 91%; docs/benchmarks/quality.md), so checkpoints are
    ranked by accuracy."""
    if not spec.compute_classification_metrics:
        labels = closed_label_set(train, validation) if for_selection and validation else None
        if labels is None:
            return None
        setup = _classification(tokenizing, labels, validation, kind="multiclass", positive=None)
        if setup is not None:
            hooks.on_event(
                "info",
                f"The completions are {len(labels)} labels: checkpoints are ranked by their "
                "classification accuracy on the validation set",
            )
        return setup
    if not validation:
        hooks.on_event("warn", "Classification metrics need a validation file; skipping them")
        return None
    labels = sorted({e.completion for e in validation} | {e.completion for e in train})
    positive = spec.classification_positive_class
    if positive is not None:
        if positive not in labels:
            hooks.on_event(
                "warn",
                f"The positive class {positive!r} is not a completion in the data; "
                f"skipping classification metrics",
            )
            return None
        kind = "binary"
    elif len(labels) < 2:
        hooks.on_event("warn", "Classification needs at least two classes; skipping metrics")
        return None
    else:
        kind = "multiclass"
        if spec.classification_n_classes and spec.classification_n_classes != len(labels):
            hooks.on_event(
                "warn",
                f"classification_n_classes is {spec.classification_n_classes} but the data has "
                f"{len(labels)} distinct completions; using those",
            )
    result = _classification(tokenizing, labels, validation, kind=kind, positive=positive)
    if result is None:
        hooks.on_event(
            "warn",
            "Some classes start with the same token, so first-token probabilities cannot tell "
            "them apart; skipping classification metrics",
        )
        return None
    result.betas = [float(b) for b in (spec.classification_betas or [1.0])]
    return result


def _classification(
    tokenizing: Tokenizing,
    labels: list[str],
    validation: Sequence[Example],
    *,
    kind: str,
    positive: str | None,
) -> Classification | None:
    """None when two labels start with the same token (first-token scoring can't split them)."""
    first: list[int] = []
    for label in labels:
        ids = tokenizing.encode(label)
        first.append(ids[0] if ids else tokenizing.eos_id)
    if len(set(first)) != len(first):
        return None
    result = Classification(
        kind=kind,
        labels=labels,
        label_tokens=first,
        positive=labels.index(positive) if positive is not None else None,
    )
    for example in validation:
        result.prompts.append(example.input_ids[: example.prompt_len])
        result.truth.append(labels.index(example.completion))
    return result


@torch.no_grad()
def class_probabilities(
    runtime: Runtime, prompts: Sequence[list[int]], label_tokens: list[int], pack_tokens: int
) -> np.ndarray:
    """P(class) for each prompt: the softmax of the next-token logits restricted to the classes'
    first tokens. Only the last position of each prompt goes through the output head."""
    token_index = torch.tensor(label_tokens, device=runtime.device)

    def score(part: slice, logits: torch.Tensor) -> np.ndarray:
        return torch.softmax(logits.float()[:, token_index], -1).cpu().numpy()

    out: list[np.ndarray] = []
    for ids, positions, lens, ends in prompt_pack(prompts, pack_tokens):
        out += runtime.packed(ids, positions, lens, ends.to(runtime.device), score)
    return np.concatenate(out)


def classification_metrics(
    runtime: Runtime, setup: Classification, pack_tokens: int
) -> dict[str, float]:
    probs = class_probabilities(runtime, setup.prompts, setup.label_tokens, pack_tokens)
    truth = np.asarray(setup.truth)
    if setup.kind == "binary":
        assert setup.positive is not None
        return metrics.binary_metrics(
            (truth == setup.positive).astype(int), probs[:, setup.positive], setup.betas
        )
    return metrics.multiclass_metrics(truth, probs.argmax(-1))


def validation_order(seed: int, n: int) -> list[int]:
    """The run's fixed order of its validation examples (batches, the generation sample)."""
    return [int(i) for i in np.random.default_rng([seed, 7919]).permutation(n)]


def setup_free_text(
    runtime: Runtime, tokenizing: Tokenizing, validation: Sequence[Example], hooks: Hooks
) -> free_text.FreeText | None:
    """The generation metric for free-text data: greedy answers to the first validation
    examples (in the order given), stopping where the model ends its turn."""
    configured = getattr(runtime.model, "generation_config", None)
    configured = getattr(configured, "eos_token_id", None)
    stops = [tokenizing.eos_id, *(configured if isinstance(configured, list) else [configured])]
    pad = runtime.tokenizer.pad_token_id
    work = free_text.setup(
        validation,
        [s for s in stops if s is not None],
        tokenizing.eos_id if pad is None else pad,
    )
    if work is not None:
        hooks.on_event(
            "info",
            "The completions are free text: checkpoints are ranked by the ROUGE-L of greedy "
            f"generations for {len(work.prompts)} validation examples",
        )
    return work


# --------------------------------------------------------------------------------------------
# The loop


def _linear_schedule(total_steps: int, warmup_steps: int) -> Any:
    def factor(step: int) -> float:
        # `step` counts optimizer steps taken; no step ever runs at learning rate 0.
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    # A function of (seed, epoch) only, so a resumed run replays exactly the same batches.
    return np.random.default_rng([seed, epoch]).permutation(n)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@dataclass
class _Plan:
    n_epochs: int
    batch_size: int
    multiplier: float
    learning_rate: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    pack_tokens: int
    bucket: int


def _batches(
    examples: Sequence[Example], seed: int, epoch: int, batch_size: int, start: int
) -> Iterator[tuple[int, list[Example]]]:
    order = _epoch_order(seed, epoch, len(examples))
    n_batches = math.ceil(len(examples) / batch_size)
    for index in range(start, n_batches):
        chosen = order[index * batch_size : (index + 1) * batch_size]
        yield index, [examples[i] for i in chosen]


class Trainer:
    # Set by train() before any checkpoint is written (declared here: methods above use them).
    started: float
    seconds_before: float
    results_path: Path
    cadence: CheckpointCadence
    last_resume: Path | None
    last_resume_step: int | None
    # Examples, or Pairs for DPO (engine.data).
    train_examples: list[Any]

    def __init__(self, spec: TrainSpec, hooks: Hooks | None = None) -> None:
        self.spec = spec
        # Under torchrun (engine.distributed): rank 0 writes and talks to the hooks; the other
        # ranks train their shard of each batch and follow rank 0's stop/may-write decisions.
        self.world = World()
        main = self.world.is_main
        self.hooks = (hooks or Hooks()) if main else Hooks()
        self.output_dir = Path(spec.output_dir)
        if not main:  # its results file is a scratch copy; it writes no checkpoint
            self.output_dir = self.output_dir / f".rank-{self.world.rank}"
        # Full fine-tuning over several processes shards the model (engine.fsdp's rule).
        self.sharded = fsdp.wanted(spec.method, self.world)
        self.dpo = spec.objective == "dpo"
        self.beta = float(spec.beta if spec.beta is not None else dpo.DEFAULT_BETA)
        self.reference_file: Path | None = None
        # Whether the run keeps its best checkpoint: known once the data is loaded (setup).
        self.selecting = False

    # -- set-up -------------------------------------------------------------------------------

    def _load_data(self, tokenizer: Any, model_dir: Path) -> None:
        spec, hooks = self.spec, self.hooks
        limit = context_length(model_dir)
        self.max_length = min(spec.max_length or limit, limit)
        self.tokenizing = Tokenizing(tokenizer, spec.prompt_loss_weight)
        load = load_pairs if self.dpo else load_examples
        self.train_examples, stats = load(
            spec.train_path,
            self.tokenizing,
            self.max_length,
            spec.too_long,
            limit=spec.max_train_examples,
            fraction=spec.data_fraction,
            seed=spec.seed,
        )
        self._report_length_policy(stats, "training")
        self.validation_examples: list[Any] = []
        if spec.validation_path:
            self.validation_examples, vstats = load(
                spec.validation_path, self.tokenizing, self.max_length, spec.too_long
            )
            self._report_length_policy(vstats, "validation")
        what = "preference pairs" if self.dpo else "examples"
        hooks.on_event(
            "info",
            f"Training on {stats.n_examples} {what} ({stats.n_tokens} tokens, longest "
            f"{stats.max_length})",
        )

    def _report_length_policy(self, stats: Any, which: str) -> None:
        if stats.n_truncated:
            self.hooks.on_event(
                "warn",
                f"Truncated {stats.n_truncated} {which} examples longer than "
                f"{self.max_length} tokens",
            )
        if stats.n_dropped:
            self.hooks.on_event(
                "warn",
                f"Dropped {stats.n_dropped} {which} examples longer than {self.max_length} tokens",
            )

    def _plan(self, device: str, bf16: bool) -> _Plan:
        spec = self.spec
        n_epochs, batch_size, multiplier = resolve_hyperparameters(
            len(self.train_examples),
            spec.n_epochs,
            spec.batch_size,
            spec.learning_rate_multiplier,
            rule=auto_rule_for(spec.auto_rule, spec.objective),
            selecting=self.selecting,
        )
        base = spec.base_learning_rate or DEFAULT_BASE_LEARNING_RATE[spec.method]
        steps_per_epoch = math.ceil(len(self.train_examples) / batch_size)
        total = steps_per_epoch * n_epochs
        kind = "cuda" if device.startswith("cuda") else "cpu"
        return _Plan(
            n_epochs=n_epochs,
            batch_size=batch_size,
            multiplier=multiplier,
            learning_rate=base * multiplier,
            steps_per_epoch=steps_per_epoch,
            total_steps=total,
            warmup_steps=int(spec.warmup_ratio * total),
            pack_tokens=spec.max_tokens_per_pack or DEFAULT_PACK_TOKENS[kind],
            bucket=BF16_CPU_BUCKET if (bf16 and kind == "cpu") else 1,
        )

    # -- steps --------------------------------------------------------------------------------

    def _packs(self, examples: Sequence[Example]) -> Iterator[Pack]:
        # Longest first, so that one long example doesn't end up alone next to a short pack: rows
        # come out closer to the token budget, hence fewer and bigger forward passes.
        ordered = sorted(examples, key=len, reverse=True)
        filler = int(self.runtime.tokenizer.pad_token_id or 0)
        return make_packs(ordered, self.plan.pack_tokens, self.plan.bucket, filler)

    def _pair_packs(self, pairs: Sequence[Pair]) -> Iterator[tuple[Pack, list[Pair]]]:
        ordered = sorted(pairs, key=len, reverse=True)  # as _packs, a pair at a time
        filler = int(self.runtime.tokenizer.pad_token_id or 0)
        return make_pair_packs(ordered, self.plan.pack_tokens, self.plan.bucket, filler)

    def _in_step(self, packs: Iterator[P]) -> Iterable[P | None]:
        """This rank's packs of a step; under FSDP, followed by as many None as it has fewer
        than the rank with the most (each stands for a `_null_loss`: engine.fsdp)."""
        if not self.sharded:
            return packs
        mine: list[P | None] = list(packs)
        return mine + [None] * (self.world.most(len(mine)) - len(mine))

    def _backward(self, loss: torch.Tensor | None) -> None:
        if loss is None and self.sharded:  # keep FSDP's collectives in step with the others
            loss = _null_loss(self.runtime)
        if loss is not None:
            torch.autograd.backward(loss)  # loss.backward(), which torch leaves unannotated

    def _sum_grads(self) -> None:
        if not self.sharded:  # FSDP summed them during the backward passes
            self.world.sum_grads(self.trainable)

    def _dpo_step(self, pairs: list[Pair]) -> dpo.DpoStats:
        """One optimizer step of DPO: the loop of `_train_step`, with whole pairs per pack so
        each pack's loss is complete and backpropagated on its own (its share of the mean over
        the global batch's pairs, so that the ranks' gradients sum to the 1-process one)."""
        stats = dpo.DpoStats()
        token_logps = partial(_token_logps, self.runtime)
        for item in self._in_step(self._pair_packs(self.world.shard(pairs))):
            loss = None
            if item is not None:
                pack, group = item
                loss = dpo.pack_step(token_logps, pack, group, self.beta, len(pairs), stats)
            self._backward(loss)
        self._sum_grads()
        self.world.sum_stats(stats)
        self._optimizer_step()
        return stats

    @torch.no_grad()
    def _dpo_evaluate(self, pairs: list[Pair]) -> dpo.DpoStats:
        stats = dpo.DpoStats()
        token_logps = partial(_token_logps, self.runtime)
        for item in self._in_step(self._pair_packs(self.world.shard(pairs))):
            loss = None
            if item is not None:
                pack, group = item
                loss = dpo.pack_step(token_logps, pack, group, self.beta, len(pairs), stats)
            if loss is None and self.sharded:
                _null_loss(self.runtime)
        summed: dpo.DpoStats = self.world.sum_stats(stats)
        return summed

    def _fill_reference(self, resume_path: Path | None) -> None:
        """Give every pair its reference log-probabilities (engine.dpo): from the resume
        checkpoint when resuming, else computed now, before the first step, with the model as
        it starts (the adapter disabled for a fresh LoRA run)."""
        pairs, validation = self.train_examples, self.validation_examples
        path = self.output_dir / dpo.REFERENCE_FILE
        restored = resume_path is not None and dpo.load_reference(
            resume_path / dpo.REFERENCE_FILE, pairs, validation
        )
        if not restored:
            fresh_lora = self.spec.method == "lora" and not self.spec.continue_from
            if resume_path is not None and not fresh_lora:
                raise TrainingError(
                    "The resume checkpoint has no reference log-probabilities for DPO; "
                    "start the job over"
                )
            context = self.runtime.model.disable_adapter() if fresh_lora else None
            token_logps = partial(_token_logps, self.runtime)
            with self._eval_mode():
                dpo.fill_reference([*pairs, *validation], token_logps, self._pair_packs, context)
            self.hooks.on_event(
                "info",
                "Computed the reference log-probabilities of "
                f"{len(pairs) + len(validation)} preference pairs",
            )
        dpo.save_reference(path, pairs, validation)
        self.reference_file = path

    def _optimizer_step(self) -> None:
        if self.spec.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.spec.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _train_step(self, examples: list[Any]) -> Any:
        if self.dpo:
            return self._dpo_step(examples)
        stats = BatchStats()
        # The global batch's weight: each rank's loss is its share of the 1-process loss, so
        # the summed gradient is the 1-process gradient.
        total_weight = _batch_weight(examples)
        for pack in self._in_step(self._packs(self.world.shard(examples))):
            loss = None
            if pack is not None:
                loss = _pack_loss(self.runtime, pack, total_weight or 1.0, stats)
            self._backward(loss)
        self._sum_grads()
        self.world.sum_stats(stats)
        self._optimizer_step()
        return stats

    @torch.no_grad()
    def _evaluate(self, examples: list[Any]) -> Any:
        if self.dpo:
            return self._dpo_evaluate(examples)
        stats = BatchStats()
        total_weight = _batch_weight(examples)
        for pack in self._in_step(self._packs(self.world.shard(examples))):
            loss = None
            if pack is not None:
                loss = _pack_loss(self.runtime, pack, total_weight or 1.0, stats)
            if loss is None and self.sharded:
                _null_loss(self.runtime)
        summed: BatchStats = self.world.sum_stats(stats)
        return summed

    def _validation_batch(self) -> list[Any]:
        n = len(self.validation_examples)
        size = min(self.plan.batch_size, n)
        cursor = self.state.validation_cursor
        chosen = [self.validation_order[(cursor + i) % n] for i in range(size)]
        self.state.validation_cursor = (cursor + size) % n
        return [self.validation_examples[i] for i in chosen]

    def _eval_mode(self) -> AbstractContextManager[Any]:
        model = self.runtime.model

        class _Eval:
            def __enter__(self) -> None:
                model.eval()

            def __exit__(self, *exc: object) -> None:
                model.train()

        return _Eval()

    # -- checkpoints --------------------------------------------------------------------------

    def _save_model(self, directory: Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        return save_trained(self.runtime, directory, self.spec.model_source, state)

    def _gathered_model(self) -> dict[str, torch.Tensor] | None:
        """Under FSDP, the whole model's weights for rank 0 to write (a collective: every rank
        calls this at the same points); otherwise None: rank 0 writes its own."""
        return fsdp.full_model_state(self.runtime.model) if self.sharded else None

    def _resume_checkpoint(self) -> Path | None:
        """Write a resume checkpoint at the current step (engine.checkpoints); None if the run
        may no longer write (it lost its claim on the job)."""
        if not self.world.agree(self.hooks.may_write()):
            return None
        self.last_resume_step = self.state.step
        model_state = self._gathered_model()
        optimizer_state = (
            fsdp.full_optimizer_state(self.runtime.model, self.optimizer) if self.sharded else None
        )
        if not self.world.is_main:
            self.cadence.mark(self.state.step)
            return self.output_dir  # rank 0 wrote it
        self.state.seconds = self.seconds_before + (time.perf_counter() - self.started)
        path = ckpt.save_resume(
            self.output_dir,
            save_model=partial(self._save_model, state=model_state),
            optimizer_state=optimizer_state or self.optimizer.state_dict(),
            scheduler=self.scheduler,
            state=self.state,
            results_csv=self.results_path,
            extra_files=[self.reference_file] if self.reference_file else [],
        )
        self.cadence.mark(self.state.step)
        self.last_resume = path
        self.hooks.on_resume_checkpoint(str(path))
        return path

    def _checkpoint(self, last_row: dict[str, float]) -> CheckpointInfo | None:
        """The epoch's model checkpoint, which the API lists; None if the run may not write."""
        if not self.world.agree(self.hooks.may_write()):
            return None
        # A resume checkpoint at this step has the model already (known on every rank).
        same_step = self.last_resume_step == self.state.step
        model_state = None if same_step else self._gathered_model()
        if not self.world.is_main:  # rank 0 wrote it
            return CheckpointInfo(self.state.epoch, self.state.step, "", {})
        latest = self.last_resume
        path = ckpt.save_model_checkpoint(
            self.checkpoints_dir,
            self.state.step,
            link_from=latest / "model" if same_step and latest is not None else None,
            save_model=partial(self._save_model, state=model_state),
        )
        info = CheckpointInfo(
            epoch=self.state.epoch,
            step=self.state.step,
            path=str(path),
            metrics={k: v for k, v in last_row.items() if not _isnan(v)},
        )
        self.checkpoints.append(info)
        self.hooks.on_checkpoint(info)
        return info

    def _setup_free_text(self) -> free_text.FreeText | None:
        """The generation metric's work when this run selects a checkpoint of free text: no
        classification metrics ranking it. Not when sharded: generating would need every rank
        in each decode step."""
        if not self.selecting or self.classification is not None or self.sharded:
            return None
        ordered = [self.validation_examples[i] for i in self.validation_order]
        return setup_free_text(self.runtime, self.tokenizing, ordered, self.hooks)

    def _record_evaluation(self, row: dict[str, float]) -> None:
        """Score the checkpoint this epoch ends (its whole-validation-set row) for selection."""
        kept = {
            k: v
            for k, v in row.items()
            if k.startswith(("full_validation_", "classification/", "generation/"))
            and not _isnan(v)
        }
        evaluation = Evaluation(self.state.step, self.state.epoch, kept)
        self.selection.add(evaluation)
        self.state.evaluations = self.selection.dump()
        metric, best = self.selection.metric, self.selection.best
        standing = (
            "best so far" if best is evaluation else f"best: step {best.step if best else '?'}"
        )
        self.hooks.on_event(
            "info",
            f"Epoch {self.state.epoch} checkpoint (step {self.state.step}) on the "
            f"{scored_on(metric)}: {metric} {kept.get(metric, math.nan):.4f} ({standing})",
        )

    def _resume_source(self) -> Path | None:
        spec = self.spec
        if spec.resume_from:
            candidates = [Path(spec.resume_from)]
        elif spec.resume:
            candidates = list(reversed(ckpt.list_resume(self.output_dir)))
        else:
            return None
        for path in candidates:
            if ckpt.is_resumable(path):
                return path
            self.hooks.on_event("warn", f"Checkpoint {path.name} is incomplete; skipping it")
        self.hooks.on_event("info", "No checkpoint to resume from; starting from the beginning")
        return None

    # -- main ---------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        spec, hooks = self.spec, self.hooks
        device = self.world.device(pick_device(spec.device))
        self.output_dir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial(ckpt.resume_root(self.output_dir))
        self.checkpoints_dir = Path(spec.checkpoints_dir or self.output_dir / "checkpoints")
        ckpt.remove_partial(self.checkpoints_dir)
        model_dir = resolve_model_source(spec.model_source, spec.cache_dir)

        resume_path = self._resume_source()
        _seed_everything(spec.seed)
        self.runtime = build_runtime(
            spec,
            model_dir,
            device,
            resume_path / "model" if resume_path else None,
            shard_over=self.world if self.sharded else None,
        )
        runtime = self.runtime
        if self.sharded:
            n = self.world.size
            hooks.on_event(
                "info",
                f"Sharding the model across {n} processes (FSDP): each holds 1/{n} of the "
                "weights, gradients and optimizer state",
            )
        self._load_data(runtime.tokenizer, model_dir)
        # Best-checkpoint selection needs something to select on.
        # (Not for DPO: its evaluations are preference statistics, not the rule's metrics.)
        self.selecting = bool(spec.best_checkpoint and self.validation_examples and not self.dpo)
        self.plan = plan = self._plan(device, runtime.bf16)
        self.classification = (
            None
            if self.dpo
            else setup_classification(
                spec,
                self.tokenizing,
                self.train_examples,
                self.validation_examples,
                hooks,
                for_selection=self.selecting,
            )
        )
        self.validation_order = validation_order(spec.seed, len(self.validation_examples))
        self.free_text = self._setup_free_text()

        self.trainable = [p for p in runtime.model.parameters() if p.requires_grad]
        # fused: one kernel over all parameters instead of a dozen per tensor; LoRA has 420
        # small tensors, where the per-tensor loop cost ~3% of a small-batch CPU step.
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=plan.learning_rate, weight_decay=spec.weight_decay, fused=True
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _linear_schedule(plan.total_steps, plan.warmup_steps)
        )
        self.state = ckpt.TrainState()
        self.checkpoints: list[CheckpointInfo] = []
        self.last_resume = None
        self.last_resume_step = None
        if resume_path is not None:
            self.state = ckpt.restore_training_state(
                resume_path,
                self.optimizer,
                self.scheduler,
                device,
                load_optimizer=(
                    partial(fsdp.load_optimizer_state, runtime.model, self.optimizer)
                    if self.sharded
                    else None
                ),
            )
            for path in ckpt.list_checkpoints(self.checkpoints_dir):
                step = int(path.name.split("-", 1)[1])
                if step <= self.state.step:
                    epoch = math.ceil(step / plan.steps_per_epoch)
                    self.checkpoints.append(CheckpointInfo(epoch, step, str(path), {}))
            hooks.on_event("info", f"Resumed from checkpoint at step {self.state.step}")
        if self.dpo:
            self._fill_reference(resume_path)

        self.selection = Selection.restore(self.state.evaluations)
        kind = (
            "dpo" if self.dpo else None if self.classification is None else self.classification.kind
        )
        betas = self.classification.betas if self.classification else [1.0]
        columns = metrics.results_columns(
            kind, betas, selection=self.selecting, generation=self.free_text is not None
        )
        self.results_path = results_path = self.output_dir / RESULTS_FILE
        writer = metrics.ResultsWriter(
            results_path,
            columns,
            restore_from=resume_path / ckpt.RESULTS if resume_path else None,
        )
        hyperparameters: dict[str, float | int] = {
            "n_epochs": plan.n_epochs,
            "batch_size": plan.batch_size,
            "learning_rate_multiplier": plan.multiplier,
            "prompt_loss_weight": spec.prompt_loss_weight,
        }
        if self.dpo:
            del hyperparameters["prompt_loss_weight"]  # DPO trains the outputs only
            hyperparameters["beta"] = self.beta
        hooks.on_event(
            "info",
            f"Hyperparameters: n_epochs={plan.n_epochs} batch_size={plan.batch_size} "
            f"learning_rate_multiplier={plan.multiplier}"
            f"{f' beta={self.beta:g}' if self.dpo else ''} (learning rate "
            f"{plan.learning_rate:.3g}), {plan.total_steps} steps on {device}"
            f"{' with bf16 autocast' if runtime.bf16 else ''}",
        )

        runtime.model.train()
        self.started = time.perf_counter()
        self.seconds_before = self.state.seconds
        self.cadence = CheckpointCadence(spec.checkpoint_every_steps, spec.checkpoint_every_seconds)
        self.cadence.mark(self.state.step)
        # Before the first step, so that the first metrics row already knows the total.
        hooks.on_progress(self.state.step, plan.total_steps, self.state.elapsed_tokens, None)
        steps_this_run = 0
        stopped_early = False
        last_row: dict[str, float] = {}
        status: Literal["succeeded", "stopped"] = "succeeded"
        try:
            while self.state.epoch < plan.n_epochs:
                epoch = self.state.epoch
                for index, batch in _batches(
                    self.train_examples,
                    spec.seed,
                    epoch,
                    plan.batch_size,
                    self.state.batch_in_epoch,
                ):
                    if self.world.agree(hooks.should_stop()):  # every rank stops together
                        status = "stopped"
                        break
                    stats = self._train_step(batch)
                    steps_this_run += 1
                    state = self.state
                    state.step += 1
                    state.batch_in_epoch = index + 1
                    state.elapsed_tokens += stats.tokens
                    state.elapsed_examples += stats.examples
                    row: dict[str, float] = {
                        "step": state.step,
                        "elapsed_tokens": state.elapsed_tokens,
                        "elapsed_examples": state.elapsed_examples,
                        **stats.row("training"),
                    }
                    end_of_epoch = index + 1 == plan.steps_per_epoch
                    last_step = state.step == plan.total_steps
                    if self.validation_examples and (
                        state.step % max(1, spec.validation_every_n_steps) == 0 or last_step
                    ):
                        with self._eval_mode():
                            row.update(self._evaluate(self._validation_batch()).row("validation"))
                    if end_of_epoch and self.classification is not None:
                        with self._eval_mode():
                            row.update(
                                classification_metrics(
                                    runtime, self.classification, plan.pack_tokens
                                )
                            )
                    if end_of_epoch and self.selecting:
                        # The checkpoint this epoch ends is scored on every validation example.
                        with self._eval_mode():
                            row.update(
                                self._evaluate(self.validation_examples).row("full_validation")
                            )
                            if self.free_text is not None:
                                row.update(
                                    free_text.score(
                                        runtime.model,
                                        runtime.tokenizer,
                                        self.free_text,
                                        runtime.autocast,
                                    )
                                )
                    writer.write(row)
                    hooks.on_metrics(row)
                    last_row = row
                    elapsed = time.perf_counter() - self.started
                    eta = elapsed / steps_this_run * (plan.total_steps - state.step)
                    hooks.on_progress(state.step, plan.total_steps, state.elapsed_tokens, eta)
                    # Rank 0's clock decides: the ranks' clocks may cross the cadence at
                    # different steps, and writing a checkpoint is a collective.
                    due = not end_of_epoch and self.world.agree(self.cadence.due(state.step))
                    if due and self._resume_checkpoint() is None:
                        status = "stopped"  # fenced out: another attempt owns the job
                        break
                if status == "stopped":
                    break
                self.state.epoch += 1
                self.state.batch_in_epoch = 0
                last_epoch = self.state.epoch == plan.n_epochs
                if self.selecting:
                    # Before the resume checkpoint, which keeps the evaluations for a resume.
                    self._record_evaluation(last_row)
                # Every epoch end is a resume point too, but the last (the model comes next).
                resumable = last_epoch or self._resume_checkpoint() is not None
                if not resumable or self._checkpoint(last_row) is None:
                    status = "stopped"
                    break
                hooks.on_event("info", f"Completed epoch {self.state.epoch}/{plan.n_epochs}")
                if (
                    self.selecting
                    and not last_epoch
                    and self.selection.should_stop(spec.early_stopping_patience)
                ):
                    stopped_early = True
                    hooks.on_event(
                        "info",
                        f"Early stopping after epoch {self.state.epoch}/{plan.n_epochs}: "
                        f"{self.selection.since_best} evaluation(s) in a row without "
                        "improvement",
                    )
                    break
        finally:
            writer.close()

        resume_out: Path | None = None
        model_out: Path | None = None
        best = self.selection.best if self.selecting else None
        if status == "stopped":
            # Stopped (cancel, pause) or fenced out: leave a resume point if still allowed to.
            if self.last_resume_step == self.state.step:  # known on every rank
                resume_out = self.last_resume
            else:
                resume_out = self._resume_checkpoint()
            model_out = resume_out / "model" if resume_out is not None else None
            hooks.on_event("info", f"Stopped at step {self.state.step}")
        elif not self.world.agree(hooks.may_write()):
            status = "stopped"
        elif best is not None and best.step != self.state.step:
            # The best checkpoint is an earlier one: it is the final model (already on disk).
            model_out = ckpt.checkpoint_dir(self.checkpoints_dir, best.step) / "model"
        else:
            model_state = self._gathered_model()
            if self.world.is_main:
                model_out = self._save_model(self.output_dir / "model", model_state)
        final = {k: v for k, v in last_row.items() if not _isnan(v)}
        selection = None
        if status == "succeeded" and best is not None:
            reason = self.selection.reason(
                stopped_early=stopped_early, patience=spec.early_stopping_patience
            )
            # The final model's metrics are the best checkpoint's.
            final.update(best.metrics)
            final["best_checkpoint_step"] = best.step
            metrics.annotate_row(results_path, best.step, metrics.SELECTION_COLUMN, "1")
            hooks.on_event("info", f"Best checkpoint: {reason}. It is the final model.")
            selection = {
                "step": best.step,
                "epoch": best.epoch,
                "metric": self.selection.metric,
                "reason": reason,
                "stopped_early": stopped_early,
                "evaluations": self.selection.dump(),
            }
        if (
            status == "succeeded"
            and spec.final_full_validation
            and self.validation_examples
            and best is None  # the best checkpoint's whole-set scores are already in `final`
        ):
            # The periodic validation rows see one batch each; a forecast compares whole sets.
            with self._eval_mode():
                final.update(self._evaluate(self.validation_examples).row("full_validation"))
        if not self.world.is_main:
            shutil.rmtree(self.output_dir, ignore_errors=True)  # its scratch results file
            resume_out = model_out = None
        return TrainResult(
            status=status,
            output_dir=str(self.output_dir),
            model_dir=str(model_out) if model_out is not None else "",
            results_csv=str(results_path),
            trained_tokens=self.state.elapsed_tokens,
            steps=self.state.step,
            hyperparameters=hyperparameters,
            final_metrics=final,
            checkpoints=list(self.checkpoints),
            resume_checkpoint=str(resume_out) if resume_out is not None else None,
            selection=selection,
        )


def _isnan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)


def train(spec: TrainSpec, hooks: Hooks | None = None) -> TrainResult:
    """Fine-tune `spec.model_source` on `spec.train_path`; see TrainSpec and Hooks."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    elif pick_device(spec.device) == "cpu":
        # Under torchrun, the processes on one host share its cores.
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        torch.set_num_threads(max(1, auto_threads() // local))
    try:
        return Trainer(spec, hooks).run()
    finally:
        torch.set_num_threads(threads)  # the setting is process-wide: leave it as we found it


def evaluate_classification(
    model_source: str,
    validation_path: str,
    *,
    adapter_dir: str | None = None,
    positive_class: str | None = None,
    betas: list[float] | None = None,
    cache_dir: str | None = None,
    device: str = "auto",
    train_path: str | None = None,
) -> dict[str, float]:
    """Classification metrics of a base model (zero-shot) or a fine-tuned adapter on a validation
    file, computed exactly as during training. The classes are the distinct completions of the
    validation file (and of `train_path`, if given)."""
    from peft import PeftModel

    device = pick_device(device)
    register_packed_attention()
    model_dir = resolve_model_source(model_source, cache_dir)
    causal_lm, tokenizer = load_model_and_tokenizer(
        model_dir, device=device, attn_implementation=ATTENTION
    )
    model = causal_lm
    if adapter_dir:
        model = PeftModel.from_pretrained(causal_lm, adapter_dir)
        # The forward training evaluated with, so the figures match its results file to the bit.
        use_lean_forward(model)
    model.eval()
    core, head = _split_model(causal_lm)
    runtime = Runtime(model, core, head, tokenizer, device, use_bf16(device), model_dir, "lora")
    tokenizing = Tokenizing(tokenizer, 0.0)
    limit = context_length(model_dir)
    validation, _ = load_examples(validation_path, tokenizing, limit, "truncate")
    train_examples: list[Example] = []
    if train_path:
        train_examples, _ = load_examples(train_path, tokenizing, limit, "truncate")
    spec = TrainSpec(
        model_source=model_source,
        train_path=train_path or validation_path,
        output_dir="",
        compute_classification_metrics=True,
        classification_positive_class=positive_class,
        classification_betas=betas,
    )
    setup = setup_classification(spec, tokenizing, train_examples, validation, Hooks())
    if setup is None:
        raise TrainingError("The validation data does not support classification metrics")
    kind = "cuda" if device.startswith("cuda") else "cpu"
    return classification_metrics(runtime, setup, DEFAULT_PACK_TOKENS[kind])
