"""Embedded defaults that let raylora run with no GPU and no network.

Two references are built in:

* ``builtin:tiny-qwen3-vl`` -- a real ``Qwen3VLForConditionalGeneration`` with a tiny config, a tokenizer
  trained offline on the synthetic data vocabulary, and a real ``Qwen3VLProcessor``. It is written once to
  ``<home>/models/`` and from then on loaded through the same ``from_pretrained`` path as a hub checkpoint.
* ``builtin:gui-grounding`` -- synthetic GUI screenshots with "click the <label> <kind>" instructions and
  ``click(x, y)`` answers, written once per seed to ``<home>/data/`` as JSONL files in the user data format.

Every artifact is built in a temporary directory beside its target and published with ``os.rename``, so
several processes (e.g. Ray workers on one machine) may ask for it at once and all see one complete copy.
The model is always built outside a torch.distributed process group (see ``ensure_tiny_model``).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

TINY_MODEL = "builtin:tiny-qwen3-vl"
GUI_DATA = "builtin:gui-grounding"

# Bump when the bytes written change, so existing homes rebuild instead of reusing a stale layout.
FORMAT_VERSION = 3  # 3: homes where a rank-1 worker published a model without weights rebuild
MARKER_FILE = "raylora_builtin.json"

_MODEL_DIR = f"tiny-qwen3-vl-v{FORMAT_VERSION}"
_DEFAULT_N_TRAIN = 64
_DEFAULT_N_EVAL = 16
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
TEMPORAL_PATCH_SIZE = 2

WIDGET_LABELS = (
    "OK",
    "Cancel",
    "Submit",
    "Save",
    "Open",
    "Close",
    "Search",
    "Settings",
    "Help",
    "Next",
    "Back",
    "Delete",
    "Edit",
    "Login",
    "Logout",
    "Home",
    "Menu",
    "Profile",
    "Send",
    "Share",
    "Print",
    "Copy",
    "Paste",
    "Undo",
    "Redo",
    "Apply",
    "Reset",
    "Yes",
    "No",
    "Email",
    "Password",
    "Username",
    "Name",
    "Phone",
    "Address",
    "City",
    "Remember me",
    "Dark mode",
    "Alerts",
    "Upload",
    "Download",
    "Refresh",
    "Start",
    "Stop",
    "Play",
    "Pause",
    "Mail",
    "Cart",
)
WIDGET_KINDS = ("button", "checkbox", "text field", "icon")
SCREEN_SIDES = (128, 160, 192, 224, 256)

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


def raylora_home() -> pathlib.Path:
    """Return the directory builtin artifacts live under: ``$RAYLORA_HOME`` or ``~/.cache/raylora``."""
    env = os.environ.get("RAYLORA_HOME")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "raylora"


def is_builtin(ref: str) -> bool:
    """Tell whether ``ref`` names a builtin artifact (``builtin:<name>``)."""
    return ref.startswith("builtin:")


def resolve_model(ref: str) -> str:
    """Map ``builtin:tiny-qwen3-vl`` to its local directory, building it once; return other refs unchanged."""
    if not is_builtin(ref):
        return ref
    _check_known(ref, (TINY_MODEL,))
    return str(ensure_tiny_model())


def resolve_data(ref: str, split: str, seed: int = 0) -> str:
    """Map ``builtin:gui-grounding`` and ``train``/``eval`` to that JSONL path; return other refs as is."""
    if not is_builtin(ref):
        return ref
    _check_known(ref, (GUI_DATA,))
    train, eval_ = ensure_gui_dataset(seed=seed)
    paths = {"train": train, "eval": eval_}
    if split not in paths:
        raise ValueError(f"unknown split {split!r} for {GUI_DATA}; known: {sorted(paths)}")
    return str(paths[split])


def _check_known(ref: str, expected: tuple[str, ...]) -> None:
    known = (TINY_MODEL, GUI_DATA)
    if ref not in known:
        raise ValueError(f"unknown builtin {ref!r}; known builtins: {', '.join(known)}")
    if ref not in expected:
        raise ValueError(f"{ref!r} cannot be used here; expected one of: {', '.join(expected)}")


def _publish(target: pathlib.Path, build: Callable[[pathlib.Path], None], marker: dict) -> pathlib.Path:
    """Build into a fresh dir beside ``target``, then rename it into place unless another process won."""
    if (target / MARKER_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _discard_incomplete(target)
    staging = _fresh_sibling(target, "build")
    try:
        build(staging)
        # The marker is written last: a directory holding it is complete.
        (staging / MARKER_FILE).write_text(json.dumps({"format_version": FORMAT_VERSION, **marker}, indent=2))
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / MARKER_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _fresh_sibling(target: pathlib.Path, purpose: str) -> pathlib.Path:
    """Create an empty, uniquely named hidden directory next to ``target``; ``os.mkdir`` honours the umask."""
    path = target.parent / f".{target.name}.{purpose}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    os.mkdir(path)
    return path


def _discard_incomplete(target: pathlib.Path) -> None:
    """Move aside a target without a marker (left by hand or by an older tool) so the rename can succeed."""
    if not target.exists() or (target / MARKER_FILE).is_file():
        return
    trash = _fresh_sibling(target, "trash")
    try:
        os.rename(target, trash / target.name)
    except OSError:
        pass  # another process moved it first
    shutil.rmtree(trash, ignore_errors=True)


def ensure_tiny_model(home: pathlib.Path | None = None) -> pathlib.Path:
    """Return the tiny Qwen3-VL checkpoint directory under ``home``, building it on first use.

    The directory holds what a hub checkpoint holds (config, safetensors weights, generation config,
    tokenizer, processor and chat template), so ``AutoModelForImageTextToText.from_pretrained`` and
    ``AutoProcessor.from_pretrained`` load it unchanged. Weights are seeded: every home gets the same model.
    """
    home = pathlib.Path(home or raylora_home())
    target = home / "models" / _MODEL_DIR
    if not (target / MARKER_FILE).is_file() and _in_process_group():
        # transformers' save_pretrained writes no config or weights on a rank other than 0 of an
        # initialized torch.distributed group: a Ray Train worker builds the model in a process of its own.
        _run_alone(f"from raylora.builtin import ensure_tiny_model; ensure_tiny_model({str(home)!r})")
        return target
    return _publish(target, _write_tiny_model, {"name": TINY_MODEL})


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


def tiny_model_config(tokenizer):
    """Return the ``Qwen3VLConfig`` of the tiny model, its special token ids taken from ``tokenizer``."""
    from transformers import Qwen3VLConfig

    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    eos_id, pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    text_config = {
        "vocab_size": _round_up(len(tokenizer), 64),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
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
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_heads": 2,
        "patch_size": PATCH_SIZE,
        "spatial_merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "out_hidden_size": 64,
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


@dataclass(frozen=True)
class Widget:
    """One drawn widget: its kind, label and pixel box ``(x0, y0, x1, y1)``, end-exclusive."""

    kind: str
    label: str
    box: tuple[int, int, int, int]


def ensure_gui_dataset(
    home: pathlib.Path | None = None,
    seed: int = 0,
    n_train: int = _DEFAULT_N_TRAIN,
    n_eval: int = _DEFAULT_N_EVAL,
) -> tuple[pathlib.Path, pathlib.Path]:
    """Return ``(train.jsonl, eval.jsonl)`` of the synthetic GUI grounding set for ``seed``, building it once.

    Each record is a user turn with a screenshot and "click the <label> <kind>", an assistant turn
    ``click(x, y)`` with the target centre in 0-1000 relative coordinates, and ``bbox``, the target box in the
    same space. Screenshot paths are relative to the JSONL files. Same seed and sizes give the same bytes.
    """
    name = f"gui-grounding-seed{seed}-v{FORMAT_VERSION}"
    if (n_train, n_eval) != (_DEFAULT_N_TRAIN, _DEFAULT_N_EVAL):
        name = f"gui-grounding-seed{seed}-n{n_train}-{n_eval}-v{FORMAT_VERSION}"
    target = pathlib.Path(home or raylora_home()) / "data" / name
    marker = {"name": GUI_DATA, "seed": seed, "n_train": n_train, "n_eval": n_eval}
    _publish(target, lambda out: _write_gui_dataset(out, seed, n_train, n_eval), marker)
    return target / "train.jsonl", target / "eval.jsonl"


def _write_gui_dataset(out: pathlib.Path, seed: int, n_train: int, n_eval: int) -> None:
    (out / "shots").mkdir()
    splits = {"train": range(n_train), "eval": range(n_train, n_train + n_eval)}
    for split, indices in splits.items():
        lines = [json.dumps(_write_example(out, seed, index)) for index in indices]
        (out / f"{split}.jsonl").write_text("".join(line + "\n" for line in lines))


def _write_example(out: pathlib.Path, seed: int, index: int) -> dict:
    rng = random.Random(f"raylora-gui:{seed}:{index}")
    width, height = rng.choice(SCREEN_SIDES), rng.choice(SCREEN_SIDES)
    widgets = layout_widgets(rng, width, height)
    target = rng.choice(widgets)
    image = draw_screenshot(rng, width, height, widgets)
    relative = f"shots/{index}.png"
    image.save(out / relative, format="PNG")
    return grounding_record(relative, target, width, height)


def grounding_record(image_path: str, target: Widget, width: int, height: int) -> dict:
    """Build one JSONL record asking to click ``target`` on a ``width`` x ``height`` screenshot."""
    x0, y0, x1, y1 = target.box
    bbox = [_rel(x0, width), _rel(y0, height), _rel(x1, width), _rel(y1, height)]
    x, y = _rel((x0 + x1) / 2, width), _rel((y0 + y1) / 2, height)
    return {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": image_path},
                    {"type": "text", "text": f"click the {target.label} {target.kind}"},
                ],
            },
            {"role": "assistant", "content": [{"type": "text", "text": f"click({x}, {y})"}]},
        ],
        "bbox": bbox,
    }


def _rel(pixels: float, extent: int) -> int:
    return round(pixels / extent * 1000)


def layout_widgets(rng: random.Random, width: int, height: int) -> list[Widget]:
    """Place 3-6 non-overlapping widgets with distinct labels; fewer only if the screen has no room."""
    wanted = rng.randint(3, 6)
    labels = rng.sample(WIDGET_LABELS, len(WIDGET_LABELS))
    placed: list[Widget] = []
    for label in labels:
        if len(placed) == wanted:
            break
        kind = rng.choice(WIDGET_KINDS)
        w, h = _widget_size(kind, label)
        if w > width - 4 or h > height - 4:
            continue
        for _ in range(20):
            x0, y0 = rng.randint(2, width - w - 2), rng.randint(2, height - h - 2)
            box = (x0, y0, x0 + w, y0 + h)
            if not any(_overlaps(box, other.box, margin=3) for other in placed):
                placed.append(Widget(kind, label, box))
                break
    return placed


_CHAR_W, _CHAR_H = 6, 11  # cell size of the glyphs of PIL's bitmap default font


def _widget_size(kind: str, label: str) -> tuple[int, int]:
    text_w = _CHAR_W * len(label)
    if kind == "button":
        return text_w + 12, _CHAR_H + 8
    if kind == "checkbox":
        return 10 + 4 + text_w, _CHAR_H + 2
    if kind == "text field":
        return max(text_w + 10, 60), _CHAR_H + 8
    return max(text_w, 16), 16 + 2 + _CHAR_H  # icon: glyph above its caption


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int) -> bool:
    return a[0] < b[2] + margin and b[0] < a[2] + margin and a[1] < b[3] + margin and b[1] < a[3] + margin


def draw_screenshot(rng: random.Random, width: int, height: int, widgets: list[Widget]):
    """Draw ``widgets`` on a plain or two-tone background and return the RGB ``PIL.Image``."""
    from PIL import Image, ImageDraw, ImageFont

    background = _pastel(rng)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    if rng.random() < 0.5:
        draw.rectangle((0, 0, width, rng.randint(12, 24)), fill=_darker(background))
    # The bitmap font renders identically everywhere; the FreeType default depends on the FreeType build.
    font = ImageFont.load_default_imagefont()
    for widget in widgets:
        _DRAWERS[widget.kind](draw, rng, widget, font)
    return image


def _draw_button(draw, rng: random.Random, widget: Widget, font) -> None:
    x0, y0, x1, y1 = widget.box
    fill = rng.choice([(52, 120, 246), (40, 167, 69), (220, 53, 69), (108, 117, 125), (240, 240, 240)])
    text = (20, 20, 20) if sum(fill) > 600 else (255, 255, 255)
    draw.rounded_rectangle((x0, y0, x1 - 1, y1 - 1), radius=4, fill=fill, outline=_darker(fill))
    draw.text((x0 + 6, y0 + 4), widget.label, fill=text, font=font)


def _draw_checkbox(draw, rng: random.Random, widget: Widget, font) -> None:
    x0, y0, _, _ = widget.box
    draw.rectangle((x0, y0 + 1, x0 + 9, y0 + 10), fill=(255, 255, 255), outline=(60, 60, 60))
    if rng.random() < 0.5:
        draw.line((x0 + 2, y0 + 6, x0 + 4, y0 + 8, x0 + 8, y0 + 2), fill=(30, 30, 30), width=2)
    draw.text((x0 + 14, y0 + 1), widget.label, fill=(30, 30, 30), font=font)


def _draw_text_field(draw, rng: random.Random, widget: Widget, font) -> None:
    x0, y0, x1, y1 = widget.box
    draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=(255, 255, 255), outline=(150, 150, 150))
    draw.text((x0 + 5, y0 + 4), widget.label, fill=(140, 140, 140), font=font)


def _draw_icon(draw, rng: random.Random, widget: Widget, font) -> None:
    x0, y0, x1, _ = widget.box
    cx = (x0 + x1) // 2
    color = rng.choice([(52, 120, 246), (255, 159, 28), (111, 66, 193), (32, 32, 32)])
    glyph = (cx - 8, y0, cx + 7, y0 + 15)
    if rng.random() < 0.5:
        draw.ellipse(glyph, fill=color)
    else:
        draw.polygon([(cx, y0), (cx + 7, y0 + 15), (cx - 8, y0 + 15)], fill=color)
    text_x = x0 + (x1 - x0 - _CHAR_W * len(widget.label)) // 2
    draw.text((text_x, y0 + 18), widget.label, fill=(30, 30, 30), font=font)


_DRAWERS = {
    "button": _draw_button,
    "checkbox": _draw_checkbox,
    "text field": _draw_text_field,
    "icon": _draw_icon,
}


def _pastel(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randint(215, 250), rng.randint(215, 250), rng.randint(215, 250))


def _darker(color: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple(max(0, c - 40) for c in color)
