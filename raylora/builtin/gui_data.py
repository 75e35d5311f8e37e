"""``builtin:gui-grounding``: synthetic GUI screenshots with "click the <label> <kind>" instructions and
``click(x, y)`` answers, written once per seed to ``<home>/data/`` as JSONL files in the user data format.
"""

from __future__ import annotations

import json
import pathlib
import random
from dataclasses import dataclass

from .. import environment
from ._publish import FORMAT_VERSION, publish

GUI_DATA = "builtin:gui-grounding"

_DEFAULT_N_TRAIN = 64

_DEFAULT_N_EVAL = 16

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
    target = pathlib.Path(home or environment.home()) / "data" / name
    marker = {"name": GUI_DATA, "seed": seed, "n_train": n_train, "n_eval": n_eval}
    publish(target, lambda out: _write_gui_dataset(out, seed, n_train, n_eval), marker)
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
