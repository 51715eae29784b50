"""A tiny, deterministic random causal LM with a real BPE tokenizer and a ChatML template.

Built in-process (no hub), so unit and end-to-end tests exercise real transformers code paths in
seconds. Same inputs give byte-identical files.
"""
from __future__ import annotations

import fcntl
import json
from pathlib import Path

from oyster_exp.models.cache_dir import cache_root

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VERSION = 1


def _corpus() -> list[str]:
    """A small fixed corpus: English and Chinese safety vocabulary plus JSON punctuation."""
    words = ["the", "a", "an", "is", "are", "was", "to", "of", "and", "or", "not", "you", "your", "I", "we", "it",
             "this", "that", "how", "what", "why", "when", "where", "can", "could", "should", "would", "help", "safe",
             "unsafe", "risk", "user", "needs", "intent", "guideline", "strategy", "response", "answer", "question",
             "please", "sorry", "information", "legal", "advice", "health", "drug", "weapon", "hack", "password",
             "money", "invest", "doctor", "law", "benign", "sensitive", "malicious", "policy", "refuse", "explain",
             "support", "contact", "professional", "emergency", "friend", "reasoning", "think", "chain", "level",
             "category", "score", "yes", "no", "true", "false", "json", "key", "value"]
    cn = list("你好请问如何安全风险用户需求意图准则策略回复帮助医生法律健康不能可以建议信息")
    punct = list('{}[]":,;.!?()-_/\\\'0123456789') + ["\n", "  "]
    lines = []
    for i in range(400):
        w = [words[(i * 7 + j * 13) % len(words)] for j in range(12)]
        lines.append(" ".join(w) + " " + "".join(cn[(i + j) % len(cn)] for j in range(6)))
        lines.append('{"' + w[0] + '": "' + " ".join(w[1:5]) + '", "' + w[5] + '": ' + str(i % 3 - 1) + "}")
        lines.append("".join(punct[(i + j) % len(punct)] for j in range(10)))
        # pseudo-words let BPE reach the full vocabulary size
        lines.append(" ".join(f"{w[j][:3]}{w[(j + 3) % 12][-2:]}{i % 17}" for j in range(8)))
    return lines


def build_tiny(out: Path, vocab_size: int = 1000, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write tokenizer + randomly initialised Qwen2 model into `out` (idempotent)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(_corpus(), trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, chat_template=CHAT_TEMPLATE,
    )
    tok.save_pretrained(out)
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
    )
    model = Qwen2ForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    return out


def ensure_tiny_model(vocab_size: int = 1000, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Cached build keyed by its parameters; a lock keeps parallel test workers from racing."""
    key = f"tiny-v{VERSION}-vocab{vocab_size}-h{hidden}-l{layers}-s{seed}"
    out = cache_root() / "models" / key
    if (out / "READY").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "READY").exists():
            build_tiny(out, vocab_size, hidden, layers, seed)
            (out / "READY").write_text(json.dumps({"key": key}) + "\n")
    return out
