"""Merge a LoRA adapter into its base model and write a plain Hugging Face directory."""

from __future__ import annotations

from pathlib import Path

from engine.models import load_model_and_tokenizer
from engine.spec import TrainingError


def merge_adapter(base_model_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Write base + adapter as one ordinary model (config, safetensors, tokenizer) to `out_dir`.

    The result loads with `AutoModelForCausalLM.from_pretrained` alone, without peft, e.g. for
    export or for servers that cannot hot-load adapters. Merging runs on the CPU in float32.
    """
    from peft import PeftModel

    adapter = Path(adapter_dir)
    if not (adapter / "adapter_config.json").is_file():
        raise TrainingError(f"{adapter} is not a LoRA adapter directory")
    base, tokenizer = load_model_and_tokenizer(base_model_dir, device="cpu")
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
