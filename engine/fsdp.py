"""Fully sharded data parallel (torch's FSDP2, `fully_shard`) for full fine-tuning.

When (`wanted`): a full fine-tune (`TrainSpec.method == "full"`) in more than one process is
always sharded; LoRA is always replicated (engine.distributed: its base is frozen and its
adapter small, so every rank holds the model and one all-reduce of the adapter's gradients per
step is all it costs). There is no setting: sharding a full fine-tune costs a gather of each
layer's weights per forward and per backward, which is what lets a model N times bigger than
one device's share train at all, and the run is the same run either way.

How (`shard`): every rank loads the whole model on the CPU, then `fully_shard`s each decoder
layer (the classes the model names in `_no_split_modules`, as accelerate wraps them) and, as
the root, the trainer's `PackedLM`: the one module whose forward encloses every use of the
embedding, the final norm and the output head (tied in many models), since the trainer calls
the body and the head, never the causal LM's own forward. Each rank then keeps 1/N of every
parameter, gradient and AdamW moment, on its device (the root's weights are gathered for a
whole pack: FSDP keeps a root unsharded from forward to backward). Gradients are summed across
ranks, not averaged (FSDP's default): each rank's loss is already its share of the global
batch's, as in the replicated scheme, so the sum is the 1-process gradient.

Two rules the trainer keeps, because every gather and every reduction is a collective:
- every rank runs as many forwards and backwards per step as the others (a rank with fewer
  packs runs `engine.trainer._null_loss`, a zero loss through every parameter);
- every rank calls `full_model_state`/`full_optimizer_state` at the same points. Rank 0 gets
  the whole model and optimizer state and writes checkpoints in the 1-process format (the
  model's safetensors, `optimizer.state_dict()` with whole tensors keyed by index), so a
  checkpoint resumes with any world size: the model loads as always, and `load_optimizer_state`
  hands each rank its shard of the saved moments.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from engine.distributed import World
from engine.spec import TrainingError


def wanted(method: str, world: World) -> bool:
    """The rule: full fine-tuning under more than one process shards; LoRA replicates."""
    return world.active and method == "full"


def shard(root: torch.nn.Module, model: torch.nn.Module, world: World, device: str) -> None:
    """Shard `model` (on the CPU) across the world's ranks onto `device`: each decoder layer is
    one FSDP group, and `root` (the module the trainer calls, holding the rest) another."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard

    in_root = {id(p) for p in root.parameters()}
    if any(id(p) not in in_root for p in model.parameters()):
        raise TrainingError(
            "This model has weights outside its transformer body and output head, which "
            "sharded (FSDP) training does not handle; train it in one process"
        )
    mesh = init_device_mesh(device.split(":")[0], (world.size,))
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(root, mesh=mesh)
    for module in root.modules():
        if isinstance(module, FSDPModule):
            # Sum (each rank's loss is its share of the global batch), with sum-only
            # reductions, which gloo supports too.
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def _names(model: torch.nn.Module) -> dict[int, list[str]]:
    """Every name of each parameter (tied weights have several), by the parameter's id."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return names


def _options() -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # Whole tensors, on the CPU, on rank 0 only (the others get an empty dict).
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole model's weights, gathered from every rank (a collective: call it on every
    rank). Rank 0 gets them on the CPU, with tied names sharing one tensor as in
    `model.state_dict()` (so `save_pretrained` writes what a 1-process run writes); the other
    ranks get None."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    state: dict[str, Any] = get_model_state_dict(model, options=_options())
    if dist.get_rank() != 0:
        return None
    for names in _names(model).values():
        for alias in names[1:]:
            if names[0] in state:
                state[alias] = state[names[0]]
    return state


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.nn.Parameter]:
    # In `optimizer.state_dict()`'s numbering: consecutive across the groups.
    return [p for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any] | None:
    """`optimizer.state_dict()` as a 1-process run has it (whole tensors, parameters numbered),
    gathered from every rank (a collective: call it on every rank); None but on rank 0."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    by_name: dict[str, Any] = get_optimizer_state_dict(model, optimizer, options=_options())
    if dist.get_rank() != 0:
        return None
    names = _names(model)
    index = {name: i for i, p in enumerate(_optimizer_params(optimizer)) for name in names[id(p)]}
    return {
        "state": {index[name]: value for name, value in by_name["state"].items()},
        "param_groups": [
            {**group, "params": [index[name] for name in group["params"]]}
            for group in by_name["param_groups"]
        ],
    }


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Load a 1-process `optimizer.state_dict()` (whole tensors; read by every rank): each rank
    keeps its shard of the moments."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = _names(model)
    name_of = [names[id(p)][0] for p in _optimizer_params(optimizer)]
    by_name: dict[str, Any] = {
        "state": {name_of[int(i)]: value for i, value in state["state"].items()},
        "param_groups": [
            {**group, "params": [name_of[int(i)] for i in group["params"]]}
            for group in state["param_groups"]
        ],
    }
    set_optimizer_state_dict(
        model, optimizer, by_name, options=StateDictOptions(full_state_dict=True)
    )
