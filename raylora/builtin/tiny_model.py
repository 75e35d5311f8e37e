"""``builtin:tiny-qwen3-vl``: a real ``Qwen3VLForConditionalGeneration`` with a tiny config, a tokenizer
trained offline on the synthetic data vocabulary, and a real ``Qwen3VLProcessor``.

It is written once to ``<home>/models/`` and from then on loaded through the same ``from_pretrained`` path
as a hub checkpoint. The model is always built outside a torch.distributed process group (see
:func:`ensure_tiny_model`).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from collections.abc import Iterator

from .. import environment
from ._publish import FORMAT_VERSION, MARKER_FILE, publish
from .gui_data import WIDGET_KINDS, WIDGET_LABELS

TINY_MODEL = "builtin:tiny-qwen3-vl"

_MODEL_DIR = f"tiny-qwen3-vl-v{FORMAT_VERSION}"
_WEIGHT_SEED = 0

# Qwen's special tokens, in Qwen's id order (there they start at 151643; here at 0).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

_TOKENIZER_VOCAB_SIZE = 1536

# ChatML as Qwen3-VL renders it; every tag trims whitespace, so the layout below does not reach the output.
CHAT_TEMPLATE = """\
{%- for message in messages -%}
    {{- '<|im_start|>' + message['role'] + '\\n' -}}
    {%- if message['content'] is string -%}
        {{- message['content'] -}}
    {%- else -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
            {%- elif item['type'] == 'video' or 'video' in item -%}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
            {%- elif 'text' in item -%}
                {{- item['text'] -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{- '<|im_end|>\\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\\n' -}}
{%- endif -%}
"""

# Images keep their native size (multiples of 32, at most 256x256) so a tiny model stays cheap on CPU.
MIN_PIXELS = 32 * 32

MAX_PIXELS = 256 * 256

PATCH_SIZE = 16

MERGE_SIZE = 2
# The widths of every Linear (also read without torch by raylora validate's rank check: widths_config).
TEXT_WIDTHS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
}
VISION_WIDTHS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_heads": 2,
    "spatial_merge_size": MERGE_SIZE,
    "out_hidden_size": 64,
}

TEMPORAL_PATCH_SIZE = 2

# Everyday words around the GUI vocabulary, so the tokenizer has merges beyond the templates themselves.
_CORPUS_WORDS = (
    "a about above account action add after again all and answer app are area as at below blue bottom box "
    "browser but by can center change choose click color confirm content continue create cursor data date "
    "default describe dialog do document done down drag drop enter error field file find first for form from "
    "go green grey has have here hide how if image in input is it item label last left link list load locate "
    "message more move my new not notification number of off on one only option or order other page panel "
    "point press previous red right row screen screenshot scroll select selected show side sign small "
    "status step switch tab table tap text that the then there this title to toggle tool top two type under "
    "up use user value view visible want we what when where which white window with word you your zoom"
).split()


def ensure_tiny_model(home: pathlib.Path | None = None) -> pathlib.Path:
    """Return the tiny Qwen3-VL checkpoint directory under ``home``, building it on first use.

    The directory holds what a hub checkpoint holds (config, safetensors weights, generation config,
    tokenizer, processor and chat template), so ``AutoModelForImageTextToText.from_pretrained`` and
    ``AutoProcessor.from_pretrained`` load it unchanged. Weights are seeded: every home gets the same model.
    """
    home = pathlib.Path(home or environment.home())
    target = home / "models" / _MODEL_DIR
    if not (target / MARKER_FILE).is_file() and _in_process_group():
        # transformers' save_pretrained writes no config or weights on a rank other than 0 of an
        # initialized torch.distributed group: a Ray Train worker builds the model in a process of its own.
        _run_alone(f"from raylora.builtin import ensure_tiny_model; ensure_tiny_model({str(home)!r})")
        return target
    return publish(target, _write_tiny_model, {"name": TINY_MODEL})


def _in_process_group() -> bool:
    torch = sys.modules.get("torch")  # not imported: no process group either
    return torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized()


def _run_alone(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building a builtin artifact failed:\n{proc.stderr[-3000:]}")


def _write_tiny_model(out: pathlib.Path) -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a one-time cache write is no progress worth a bar
    processor = build_tiny_processor()
    model = build_tiny_model(processor.tokenizer)
    model.save_pretrained(out)
    processor.save_pretrained(out)


def tokenizer_corpus() -> Iterator[str]:
    """Yield the deterministic text the builtin tokenizer is trained on: the synthetic data vocabulary."""
    yield "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    yield "system user assistant\nYou are a helpful assistant.\n\n"
    for word in _CORPUS_WORDS:
        yield f"{word} {word.capitalize()} {word.upper()}, {word}."
    for kind in WIDGET_KINDS:
        for label in WIDGET_LABELS:
            yield f"click the {label} {kind}"
    for value in range(0, 1001, 7):
        yield f"click({value}, {1000 - value})"


def build_tiny_tokenizer():
    """Train a byte-level BPE tokenizer on :func:`tokenizer_corpus` and wrap it as a ``Qwen2Tokenizer``.

    The backend pipeline mirrors ``Qwen2Tokenizer``'s (NFC, Qwen's split regex, byte level) because on load
    that class keeps only the vocab and merges from ``tokenizer.json`` and rebuilds the rest itself.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=_TOKENIZER_VOCAB_SIZE,
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tokenizer_corpus(), trainer=trainer)
    model_state = json.loads(backend.to_str())["model"]
    return Qwen2Tokenizer(
        vocab=model_state["vocab"],
        merges=[tuple(merge) for merge in model_state["merges"]],
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
        model_max_length=4096,
    )


def build_tiny_processor():
    """Build the tiny model's ``Qwen3VLProcessor``: trained tokenizer, Qwen2-VL image processor, template."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    tokenizer = build_tiny_tokenizer()
    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        merge_size=MERGE_SIZE,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": MIN_PIXELS, "longest_edge": 4 * MAX_PIXELS},
        patch_size=PATCH_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        merge_size=MERGE_SIZE,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def widths_config() -> dict:
    """The tiny model's ``config.json`` as far as its Linear widths go (no torch: ``raylora validate``)."""
    return {"model_type": "qwen3_vl", "text_config": dict(TEXT_WIDTHS), "vision_config": dict(VISION_WIDTHS)}


def tiny_model_config(tokenizer):
    """Return the ``Qwen3VLConfig`` of the tiny model, its special token ids taken from ``tokenizer``."""
    from transformers import Qwen3VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    text_config = {
        "vocab_size": _round_up(len(tokenizer), 64),
        **TEXT_WIDTHS,
        "num_hidden_layers": 2,
        "max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 5_000_000.0,
            "mrope_section": [4, 2, 2],
            "mrope_interleaved": True,
        },
        "bos_token_id": None,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "dtype": "float32",
    }
    # Every Linear's in_features is a multiple of 64: bitsandbytes' CPU 4-bit kernels need whole blocks.
    vision_config = {
        "depth": 2,
        **VISION_WIDTHS,
        "patch_size": PATCH_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "num_position_embeddings": 16,
        "deepstack_visual_indexes": [0, 1],
    }
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
        dtype="float32",
    )


def build_tiny_model(tokenizer):
    """Build the tiny ``Qwen3VLForConditionalGeneration``: seeded float32 weights, greedy generation."""
    import torch
    from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

    config = tiny_model_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_WEIGHT_SEED)
        model = Qwen3VLForConditionalGeneration(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=16,
    )
    return model


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
