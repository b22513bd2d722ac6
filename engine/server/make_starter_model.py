"""Turn the starter model's GGUF file into an ordinary Hugging Face folder that vLLM can serve.

Run by vLLM's own python (it has torch and transformers; `gguf` and `accelerate`, which
transformers needs to read a GGUF file, are installed beside them first):

    ~/.cache/chatsite/vllm-venv/bin/python engine/server/make_starter_model.py FILE.gguf DIR

The weights are dequantized to bf16 safetensors; the tokenizer and its chat template, which the
GGUF file carries, are kept. Nothing is fetched from a model hub. The folder is written whole into
DIR, which must not exist yet.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything comes from the file
os.environ.setdefault("TQDM_DISABLE", "1")  # progress bars are one line per step on a terminal, not in a log

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig
from transformers.utils import logging

logging.disable_progress_bar()


def main(gguf: Path, folder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # dequantize: plain bf16 weights, not GGUF blocks (which neither save nor load in vLLM's CPU build).
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True),
    )
    if getattr(model.config, "quantization_config", None) is not None:
        raise SystemExit("the weights were not dequantized: vLLM could not load them")
    if not tokenizer.chat_template:
        raise SystemExit(f"{gguf.name} carries no chat template")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"wrote {model.config.model_type} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M) to {folder}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]).resolve(), Path(sys.argv[2]))
