"""Model sources (HF dir, GGUF file, package), the tiny model itself, and adapter merging."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from engine import TrainingError, merge_adapter, resolve_model_source
from engine import models as engine_models
from engine.models import context_length, load_model_and_tokenizer, pick_device
from engine.tiny import build_tiny_model


def _permute_for_gguf(weight: np.ndarray, n_head: int) -> np.ndarray:
    # llama.cpp stores q/k rows interleaved for its rotary layout; transformers undoes this on
    # load (same formula as llama.cpp's convert_hf_to_gguf.py).
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_gguf(model_dir: Path, path: Path) -> Path:
    """Write the tiny Llama as a GGUF file the way llama.cpp would: Q8_0 matrices, F32 norms and
    embeddings, a GPT-2 style BPE vocabulary and the chat template."""
    import gguf
    from transformers import AutoModelForCausalLM

    config = json.loads((model_dir / "config.json").read_text())
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config["hidden_size"] // heads)
    writer.add_rope_freq_base(float(config["rope_parameters"]["rope_theta"]))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])

    vocab = sorted(tok["model"]["vocab"].items(), key=lambda item: item[1])
    special = {t["content"]: t["id"] for t in tok["added_tokens"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t, _ in vocab]
    )
    merges = tok["model"]["merges"]
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    writer.add_bos_token_id(special[tok_config["bos_token"]])
    writer.add_eos_token_id(special[tok_config["eos_token"]])
    writer.add_pad_token_id(special[tok_config["pad_token"]])
    writer.add_chat_template((model_dir / "chat_template.jinja").read_text())

    names = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for name, tensor in model.state_dict().items():
        data = tensor.float().numpy()
        if name == "model.embed_tokens.weight":
            writer.add_tensor("token_embd.weight", data)
            continue
        if name == "model.norm.weight":
            writer.add_tensor("output_norm.weight", data)
            continue
        if name == "lm_head.weight":
            continue  # tied to the embeddings
        layer, rest = name.removeprefix("model.layers.").split(".", 1)
        rest = rest.removesuffix(".weight")
        if rest == "self_attn.q_proj":
            data = _permute_for_gguf(data, heads)
        elif rest == "self_attn.k_proj":
            data = _permute_for_gguf(data, kv_heads)
        target = f"blk.{layer}.{names[rest]}.weight"
        if data.ndim == 2:
            quantized = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(target, quantized, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(target, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tiny_model_dir, tmp_path_factory.mktemp("gguf") / "tiny.Q8_0.gguf")


def _logits(model_dir: Path, text: str) -> torch.Tensor:
    model, tokenizer = load_model_and_tokenizer(model_dir, device="cpu")
    with torch.no_grad():
        logits: torch.Tensor = model(tokenizer(text, return_tensors="pt")["input_ids"]).logits[0]
        return logits


def test_build_tiny_model_is_deterministic_and_complete(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a")
    second = build_tiny_model(tmp_path / "b")

    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes()
    _, tokenizer = load_model_and_tokenizer(first, device="cpu")
    text = "Héllo wörld! 123 {x: [1, 2]}\n\t🎉"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert tokenizer.eos_token
    assert tokenizer.pad_token
    assert tokenizer.bos_token
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_hf_directory_is_its_own_source(tiny_model_dir: Path) -> None:
    assert resolve_model_source(str(tiny_model_dir)) == tiny_model_dir
    assert context_length(tiny_model_dir) == 512


def test_unknown_source_is_a_training_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="neither"):
        resolve_model_source(str(tmp_path / "missing"))
    with pytest.raises(TrainingError, match="not installed"):
        resolve_model_source("package:no_such_model_package_here")


def test_gguf_is_dequantized_once_and_cached(
    tiny_model_dir: Path, tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[Path] = []
    real = engine_models.dequantize_gguf

    def counting(gguf: Path, out_dir: Path) -> Path:
        calls.append(gguf)
        return real(gguf, out_dir)

    monkeypatch.setattr(engine_models, "dequantize_gguf", counting)
    cache = tmp_path / "cache"

    first = resolve_model_source(str(tiny_gguf), str(cache))
    second = resolve_model_source(str(tiny_gguf), str(cache))

    assert first == second
    assert len(calls) == 1
    assert first.parent == cache
    config = json.loads((first / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["max_position_embeddings"] == 512
    # Same tokenizer and chat template, and the same function up to Q8_0 rounding.
    _, tokenizer = load_model_and_tokenizer(first, device="cpu")
    _, original_tokenizer = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    text = "The quick brown fox, 42 times!"
    assert tokenizer(text)["input_ids"] == original_tokenizer(text)["input_ids"]
    assert tokenizer.eos_token == original_tokenizer.eos_token
    assert tokenizer.chat_template == original_tokenizer.chat_template
    dequantized = load_file(first / "model.safetensors")
    original = load_file(tiny_model_dir / "model.safetensors")
    for name, weight in original.items():
        # Q8_0 keeps 8 bits per weight with a scale per 32: errors stay within ~1% of the range.
        # A wrong q/k row permutation would be off by the whole range.
        error = (dequantized[name] - weight).abs().max()
        assert error <= 0.01 * weight.abs().max(), name
    torch.testing.assert_close(
        _logits(first, text), _logits(tiny_model_dir, text), rtol=0.0, atol=2e-2
    )


def test_package_source_finds_the_gguf_without_importing(
    tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "site" / "tunery_fake_model"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    shutil.copy(tiny_gguf, package / "model.gguf")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))

    resolved = resolve_model_source("package:tunery_fake_model", str(tmp_path / "cache"))

    assert (resolved / "model.safetensors").exists()
    assert "tunery_fake_model" not in sys.modules


def test_pick_device() -> None:
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")


def test_merge_adapter_writes_a_plain_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    base, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():  # a non-trivial adapter: LoRA's B starts at zero
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    peft_model.save_pretrained(str(tmp_path / "adapter"))

    out = merge_adapter(tiny_model_dir, tmp_path / "adapter", tmp_path / "merged")

    assert not (out / "adapter_config.json").exists()
    base_again, _ = load_model_and_tokenizer(tiny_model_dir, device="cpu")
    reference = PeftModel.from_pretrained(base_again, str(tmp_path / "adapter"))
    ids = torch.tensor([[5, 17, 42, 99]])
    with torch.no_grad():
        expected: Any = reference(ids).logits
    torch.testing.assert_close(_logits_ids(out, ids), expected, rtol=1e-4, atol=1e-5)


def _logits_ids(model_dir: Path, ids: torch.Tensor) -> torch.Tensor:
    model, _ = load_model_and_tokenizer(model_dir, device="cpu")
    with torch.no_grad():
        logits: torch.Tensor = model(ids).logits
        return logits


def test_a_second_process_waits_for_the_first_dequantization(tmp_path: Path) -> None:
    """While one process holds the cache entry's lock (dequantizing), another one asking for the
    same GGUF waits, then uses the finished copy instead of writing its own."""
    import fcntl
    import subprocess
    import time

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"not read: the copy exists by the time the lock is free")
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / engine_models._gguf_cache_key(gguf)
    code = (
        "import sys; from engine.models import _resolve_gguf; "
        f"print(_resolve_gguf(__import__('pathlib').Path({str(gguf)!r}), {str(cache)!r}))"
    )
    repo = Path(__file__).resolve().parents[2]
    with open(cache / f".{target.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        waiter = subprocess.Popen(
            [sys.executable, "-c", code], cwd=repo, stdout=subprocess.PIPE, text=True
        )
        time.sleep(2)
        assert waiter.poll() is None  # blocked on the lock
        target.mkdir()
        (target / "config.json").write_text("{}")  # what the first process's rename leaves
    out, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 0
    assert out.strip() == str(target)
    assert not list(cache.glob(".tmp-*"))  # it never started a copy of its own


def test_auto_threads_leaves_the_cores_other_processes_use(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(engine_models, "_busy_cores", lambda cores: 0.1)
    assert engine_models.auto_threads() == cores
    monkeypatch.setattr(engine_models, "_busy_cores", lambda cores: cores - 0.9)
    assert engine_models.auto_threads() == 1  # never zero


def test_busy_cores_is_a_current_sample() -> None:
    busy = engine_models._busy_cores(2, seconds=0.2)
    assert busy is not None and 0 <= busy <= (__import__("os").cpu_count() or 1)


def test_threads_follow_the_load_of_other_processes() -> None:
    """A real process spinning on one core: the next refresh leaves that core to it."""
    import os
    import subprocess
    import time

    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("needs two cores")
    before = torch.get_num_threads()
    follow = engine_models.ThreadsFollowLoad(every=0.5)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert follow.refresh() is None  # samples are at least `every` apart
        time.sleep(1.0)
        threads = follow.refresh()
        assert threads is not None and 1 <= threads <= cores - 1
        assert torch.get_num_threads() == threads
    finally:
        spinner.kill()
        spinner.wait()
        torch.set_num_threads(before)


def test_omp_num_threads_is_the_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert engine_models.ThreadsFollowLoad().cores == 1
