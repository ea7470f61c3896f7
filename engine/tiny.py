"""Tiny random-initialised Hugging Face models for tests and demos.

`build_tiny_model` writes a complete model directory (config, safetensors weights, fast tokenizer
with a ChatML chat template) in about a second, without touching the network. Everything in it is
deterministic under `seed`, so tests that train it can compare results bit for bit.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported lazily at run time: transformers is slow to import
    from transformers import PreTrainedTokenizerFast

# ChatML, the format SmolLM2-Instruct uses, so that code paths exercised by tests on the tiny model
# are the ones the default base model takes.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# The template the embedded default model (SmolLM2-135M-Instruct) ships in its GGUF: ChatML with a
# default system prompt for a conversation that doesn't open with one. Tests render with it to
# check the default model's path without loading the model.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

BOS_TOKEN = "<|endoftext|>"
EOS_TOKEN = "<|im_end|>"
# A pad token distinct from EOS: a test that ever sees it in a training batch has found a bug.
PAD_TOKEN = "<pad>"
SPECIAL_TOKENS = [BOS_TOKEN, "<|im_start|>", EOS_TOKEN, PAD_TOKEN]

# The merges are learnt from this text. The byte-level alphabet guarantees that any string
# round-trips whatever the merges are; the corpus only makes common English cheaper in tokens.
_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello, how are you today? I am fine, thank you very much!",
    "Translate to French: cheese => fromage, bread => pain, water => eau.",
    "Question: what is two plus two? Answer: four.",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Please call me back at 555-0199 before 6pm, or send a text message.",
    "Congratulations! You have won a free prize. Reply WIN to claim now.",
    "I'll see you at the station in ten minutes; don't be late.",
    "def add(a, b):\n    return a + b\n",
    "user assistant system: you are a helpful assistant.",
    string.ascii_letters,
    string.digits,
    string.punctuation,
    " ".join(string.ascii_lowercase),
    " ".join(str(i) for i in range(100)),
]


def _build_tokenizer(
    vocab_size: int, chat_template: bool | str, add_bos: bool = False
) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Repeating the corpus gives the frequent pairs a clear lead, so merges don't hinge on ties.
    tokenizer.train_from_iterator(_CORPUS * 20, trainer=trainer)
    if add_bos:
        # As Llama-style tokenizers do: BOS in front of every encoded text.
        bos = (BOS_TOKEN, tokenizer.token_to_id(BOS_TOKEN))
        tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B", special_tokens=[bos]
        )
    # transformers 5 leaves TokenizersBackend.__init__ unannotated.
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]  # see above
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=["<|im_start|>"],
    )
    if chat_template:
        fast.chat_template = chat_template if isinstance(chat_template, str) else CHATML_TEMPLATE
    return fast


def build_tiny_model(
    out_dir: str | Path,
    *,
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 512,
    seed: int = 0,
    chat_template: bool | str = True,
    add_bos: bool = False,
) -> Path:
    """Write a random-initialised LlamaForCausalLM with its tokenizer into `out_dir`.

    `chat_template` is True for ChatML, False for none, or a template's source; `add_bos` makes
    the tokenizer put a BOS in front of every text, as Llama's does.

    The tokenizer may end up with slightly fewer tokens than `vocab_size` if the corpus runs out of
    merges; the model's embedding matrix always has exactly `vocab_size` rows.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(vocab_size, chat_template, add_bos)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),  # grouped-query attention, as in SmolLM2
        max_position_embeddings=max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    # Initialise on a private generator state so building a model never perturbs the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
