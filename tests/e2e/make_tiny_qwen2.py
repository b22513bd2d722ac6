"""Write a tiny random-weight Qwen2 model that vLLM can serve, without touching the model hub.

Run it with vLLM's own python (it has torch, transformers and tokenizers):

    ~/.cache/chatsite/vllm-venv/bin/python tests/e2e/make_tiny_qwen2.py DIR

The model is Qwen2's architecture at toy size (hidden 128, 2 layers, 2 attention heads, 1
key-value head: head_dim 64, the smallest vLLM's CPU attention accepts) with a byte-level BPE
tokenizer trained here on a made-up corpus and Qwen2's ChatML chat template. Its answers are
noise, which is all the end-to-end tests need: they check the plumbing, not the words.

The end-of-answer token is made unreachable (see `_never_end`), so an answer always runs to
max_tokens: a test that stops an answer midway does not race the model ending it by chance.
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is made locally

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 1024
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Explain the benefits of local AI models.",
    "A private chat answers from a model that runs on this machine.",
    "Hello! How can I help you today?",
    "안녕하세요, 무엇을 도와드릴까요?",
    "def main():\n    print('hello, world')\n",
    "1 2 3 4 5 6 7 8 9 10 100 1000",
]


def build_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS * 50, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=CHAT_TEMPLATE,
        model_max_length=32768,
    )


def build_model(vocab_size: int, eos_id: int) -> Qwen2ForCausalLM:
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=None,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    _never_end(model, eos_id)
    return model.to(torch.bfloat16)


@torch.no_grad()
def _never_end(model: Qwen2ForCausalLM, eos_id: int) -> None:
    """Give the end-of-answer token a logit far below every other, whatever the input.

    Hidden dimension 0 of the residual stream is held at a large constant: every token embedding
    sets it, and no layer writes to it. After the final norm it is therefore always strongly
    positive, and a large negative weight on it for the end token alone (the other tokens ignore
    it) pushes that token's logit far down.
    """
    model.model.embed_tokens.weight[:, 0] = 4.0
    for layer in model.model.layers:
        layer.self_attn.o_proj.weight[0, :] = 0.0
        layer.mlp.down_proj.weight[0, :] = 0.0
    model.lm_head.weight[:, 0] = 0.0
    model.lm_head.weight[eos_id, 0] = -50.0


def main(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = build_model(len(tokenizer), eos_id)
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    (target / "generation_config.json").write_text(json.dumps({"eos_token_id": eos_id}, indent=2) + "\n")
    # Written last: a folder without it is an interrupted run, to be made again.
    (target / "COMPLETE").write_text("tiny random-weight Qwen2 for the end-to-end tests\n")
    print(f"Wrote a tiny Qwen2 (vocabulary {len(tokenizer)}) to {target}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: make_tiny_qwen2.py DIR")
    main(Path(sys.argv[1]))
