"""One geometry, in pixels: every point and box is compared in float pixels of the screenshot it refers to.

The expected hit or miss is computed here in plain pixel geometry, from the numbers the model wrote and the
screen size, never by calling raylora; so are the image paths a record resolves to and the screen a record
is scored on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from raylora.data import actions, coordinates, formats, samples, scoring, templates
from raylora.errors import DataError

SCREENS = [(3840, 2160), (1080, 2400), (4000, 300), (1920, 1080)]
EXTENT = {"qwen3vl": 1000.0, "mai-ui": 999.0, "unit": 1.0}  # relative conventions' far edge
CONVENTIONS = ("qwen3vl", "mai-ui", "pixels", "unit")
NATIVE = {"qwen3vl": "qwen3vl", "mai-ui": "mai-ui", "click": None}  # what each output style fixes
FAST = settings(max_examples=100)


def _screen():
    return st.sampled_from(SCREENS) | st.tuples(st.integers(32, 5000), st.integers(32, 5000))


@st.composite
def _case(draw):
    """A screen, a box of at least 2×2 px on it, a pixel the model meant (near the box), the data's
    convention and the style the model answered in."""
    w, h = draw(_screen())
    bw, bh = draw(st.floats(2, max(2, w / 4))), draw(st.floats(2, max(2, h / 4)))
    x1, y1 = draw(st.floats(0, w - bw)), draw(st.floats(0, h - bh))
    box = (x1, y1, x1 + bw, y1 + bh)
    px = draw(st.floats(max(0, x1 - 2 * bw), min(w, x1 + 3 * bw)))
    py = draw(st.floats(max(0, y1 - 2 * bh), min(h, y1 + 3 * bh)))
    return (w, h), box, (px, py), draw(st.sampled_from(CONVENTIONS)), draw(st.sampled_from(tuple(NATIVE)))


def _written(pixel, convention, size):
    """The numbers a model writes for ``pixel`` in ``convention`` (4 decimals, as text carries them)."""
    extent = EXTENT.get(convention)
    if extent is None:
        return round(pixel[0], 4), round(pixel[1], 4)
    return round(pixel[0] / size[0] * extent, 4), round(pixel[1] / size[1] * extent, 4)


def _text(style, point):
    x, y = point
    if style == "qwen3vl":
        return json.dumps({"point_2d": [x, y]})
    if style == "mai-ui":
        return "<answer>" + json.dumps({"coordinate": [x, y]}) + "</answer>"
    return f"click({x}, {y})"


def _as_pixels(written, convention, size):
    """The reference: the written numbers back in pixels of the screen."""
    extent = EXTENT.get(convention)
    if extent is None:
        return written
    return written[0] / extent * size[0], written[1] / extent * size[1]


def _record(answer: str, images=(), box_pixels=None, bbox=None, screen=-1) -> samples.Sample:
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "go"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]
    screen = screen if screen >= 0 else max(len(images) - 1, 0)
    return samples.Sample(messages, list(images), bbox, "mem:1", {}, None, screen, box_pixels)


@FAST
@given(_case(), st.sampled_from(tuple(templates.TEMPLATES)))
def test_a_click_hits_exactly_when_its_pixel_is_in_the_box(case, template):
    size, box, meant, convention, style = case
    data_convention = templates.get(template).answer_convention(convention)
    # The reference's own style is read in the data's convention; another style in the one it fixes.
    output_convention = data_convention if style == template else NATIVE[style] or data_convention
    written = _written(meant, output_convention, size)
    pixel = _as_pixels(written, output_convention, size)
    edges = [pixel[0] - box[0], box[2] - pixel[0], pixel[1] - box[1], box[3] - pixel[1]]
    assume(all(abs(e) > 1e-6 for e in edges))  # a float tie at an edge is no question of the rule
    center = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    record = _record(_text(template, _written(center, data_convention, size)), box_pixels=box)
    goal = scoring.goal(record, data_convention, size=size)
    assert scoring.score(_text(style, written), goal).click is all(e >= 0 for e in edges)


@FAST
@given(_screen(), st.sampled_from(("click", "qwen3vl")), st.data())
def test_a_box_less_click_is_right_within_14_percent_of_the_screen_in_each_axis(size, style, data):
    # AITW's rule: the distance between the points as fractions of the screen's width and height.
    w, h = size
    ref_px = (data.draw(st.floats(0, w)), data.draw(st.floats(0, h)))
    out_px = (data.draw(st.floats(0, w)), data.draw(st.floats(0, h)))
    convention = "mai-ui" if style == "click" else "qwen3vl"  # click(x, y) is read in the data's 0–999
    ref_written, out_written = _written(ref_px, "mai-ui", size), _written(out_px, convention, size)
    a, b = _as_pixels(ref_written, "mai-ui", size), _as_pixels(out_written, convention, size)
    margin = math.hypot((a[0] - b[0]) / w, (a[1] - b[1]) / h) - 0.14
    assume(abs(margin) > 1e-6)
    call = {"name": "mobile_use", "arguments": {"action": "click", "coordinate": list(ref_written)}}
    goal = scoring.goal(_record(f"<tool_call>{json.dumps(call)}</tool_call>"), "mai-ui", size=size)
    outcome = scoring.score(_text(style, out_written), goal)
    assert outcome.click is (margin < 0) and outcome.step is (margin < 0)


@FAST
@given(_screen(), st.sampled_from(tuple(templates.TEMPLATES)), st.sampled_from(CONVENTIONS), st.data())
def test_a_rendered_answer_parses_back_to_its_pixel_within_half_a_unit(size, template, convention, data):
    w, h = size
    bw, bh = data.draw(st.floats(2, w / 2)), data.draw(st.floats(2, h / 2))
    x1, y1 = data.draw(st.floats(0, w - bw)), data.draw(st.floats(0, h - bh))
    box = [x1, y1, x1 + bw, y1 + bh]
    row = templates.grounding_row("shot.png", "go", box, size, template, convention)
    answer_convention = templates.get(template).answer_convention(convention)
    point = actions.parse(row["messages"][-1]["content"][0]["text"]).point
    x, y = _as_pixels(point, answer_convention, size)
    extent = EXTENT.get(answer_convention)
    unit = (1e-4 if extent == 1.0 else 1.0) * (1.0 if extent is None else max(w, h) / extent)
    assert abs(x - (box[0] + box[2]) / 2) <= unit / 2 + 1e-9 * w
    assert abs(y - (box[1] + box[3]) / 2) <= unit / 2 + 1e-9 * h
    assert row["box_pixels"] == box  # the box is never rounded


def _smart_resize(w, h, min_pixels, max_pixels, factor):
    """Qwen2-VL's processor resize (transformers' ``smart_resize``), for (width, height)."""
    hb, wb = round(h / factor) * factor, round(w / factor) * factor
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = (
            max(factor, math.floor(h / beta / factor) * factor),
            max(factor, math.floor(w / beta / factor) * factor),
        )
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return wb, hb


@FAST
@given(_case(), st.integers(56 * 56, 1024 * 1024), st.integers(1, 16), st.data())
def test_resized_pixels_are_pixels_of_the_image_the_processor_resized(case, low, ratio, data):
    size, box, meant, _, _ = case
    assume(max(size) / min(size) <= 200)
    bounds = coordinates.Bounds(low, low * ratio)
    rw, rh = _smart_resize(*size, low, low * ratio, 28)
    # rendering: the answer is the box's center in resized pixels, within half a resized pixel
    row = templates.grounding_row(
        "s.png", "go", list(box), size, "click", "resized-pixels", bounds.resized(size)
    )
    x, y = actions.parse(row["messages"][-1]["content"][0]["text"]).point
    assert abs(x * size[0] / rw - (box[0] + box[2]) / 2) <= size[0] / rw / 2 + 1e-6
    assert abs(y * size[1] / rh - (box[1] + box[3]) / 2) <= size[1] / rh / 2 + 1e-6
    # scoring: a click written in resized pixels (or in the 0–1000 / 0–999 a Qwen3-VL or MAI-UI answer
    # fixes) hits exactly when its pixel is in the box
    style = data.draw(st.sampled_from(("click", "qwen3vl", "mai-ui")))
    extent = (rw, rh) if style == "click" else (EXTENT[style], EXTENT[style])
    written = (round(meant[0] / size[0] * extent[0], 4), round(meant[1] / size[1] * extent[1], 4))
    pixel = (written[0] / extent[0] * size[0], written[1] / extent[1] * size[1])
    edges = [pixel[0] - box[0], box[2] - pixel[0], pixel[1] - box[1], box[3] - pixel[1]]
    assume(all(abs(e) > 1e-6 for e in edges))
    record = _record(row["messages"][-1]["content"][0]["text"], box_pixels=box)
    goal = scoring.goal(record, "resized-pixels", size=size, bounds=bounds)
    assert scoring.score(_text(style, written), goal).click is all(e >= 0 for e in edges)


# -- the screen a record is scored on ----------------------------------------------------------------


def _png(path: Path, size, mode="RGB", color=(0, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path)


def test_a_navigation_history_is_scored_on_its_last_screenshot(tmp_path):
    _png(tmp_path / "old.png", (400, 800))
    _png(tmp_path / "cur.png", (1080, 2400))
    row = {
        "messages": [
            {"role": "user", "content": "<image><image>go"},
            {"role": "assistant", "content": "click(540, 1200)"},
        ]
    }
    (tmp_path / "d.jsonl").write_text(json.dumps({**row, "images": ["old.png", "cur.png"]}) + "\n")
    (record,) = samples.read(tmp_path / "d.jsonl", coordinates="pixels")
    goal = scoring.goal(record, "pixels")
    assert goal.size == (1080, 2400)
    # 100 px right: 0.093 of the current screen's width (a hit), 0.25 of the old one's (it would miss)
    assert scoring.score("click(640, 1200)", goal).click is True
    assert scoring.score("click(740, 1200)", goal).click is False  # 200 px: 0.185 of 1080


def _swift(images, objects, answer="<bbox>") -> dict:
    turns = [
        {"role": "user", "content": "<image>" * len(images) + "tap <ref-object>"},
        {"role": "assistant", "content": answer},
    ]
    return {"messages": turns, "images": images, "objects": {"ref": ["OK"], **objects}}


def test_ms_swift_objects_are_pixels_on_the_image_they_name(tmp_path):
    _png(tmp_path / "a.png", (1080, 2400))
    _png(tmp_path / "b.png", (2000, 1000))
    rows = [
        _swift(["a.png"], {"bbox": [[500, 700, 580, 820]]}),  # no bbox_type: real, pixels
        _swift(["a.png", "b.png"], {"bbox": [[900, 400, 1100, 600]], "image_id": [1]}),
        _swift(["a.png"], {"bbox": [[0.5, 0.25, 0.6, 0.35]], "bbox_type": "norm1"}),
        _swift(["a.png"], {"bbox": [[540, 760]]}, "Action: click(start_box='<bbox>')"),  # a point, in place
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    read = samples.read(tmp_path / "d.jsonl")
    centers = [(540, 760), (1000, 500), (594, 720), (540, 760)]
    sizes = [(1080, 2400), (2000, 1000), (1080, 2400), (1080, 2400)]
    for record, (cx, cy), (w, h) in zip(read, centers, sizes, strict=True):
        assert samples.screen_size(record) == (w, h)
        x, y = round(cx / w * 1000), round(cy / h * 1000)
        assert record.answer() in (f"click({x}, {y})", f"Action: click(start_box='({x},{y})')")
    (tmp_path / "bad.jsonl").write_text(
        json.dumps(_swift(["a.png"], {"bbox": [[1, 2, 3, 4]], "bbox_type": "px"}))
    )
    with pytest.raises(DataError, match="bbox_type of real, norm1000, norm1"):
        samples.read(tmp_path / "bad.jsonl")


def test_exif_orientation_and_alpha_are_applied_as_displayed(tmp_path):
    image = Image.new("RGB", (300, 100), "white")
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    image.save(tmp_path / "r.jpg", exif=exif)
    assert samples.image_size(str(tmp_path / "r.jpg")) == (100, 300)
    assert samples.load_image(str(tmp_path / "r.jpg")).size == (100, 300)
    _png(tmp_path / "a.png", (4, 4), "RGBA", (0, 0, 0, 0))
    assert samples.load_image(str(tmp_path / "a.png")).getpixel((1, 1)) == (255, 255, 255)


# -- one path rule ------------------------------------------------------------------------------------


def _write_every_format(folder: Path) -> list[tuple[str, str, str]]:
    """One record per format under ``folder`` (data/ss/...), images relative to the data file: ``(format,
    file, image)`` each."""
    _png(folder / "images" / "x.png", (1000, 500))
    _png(folder / "shots" / "y.png", (1000, 500))
    user = [{"type": "image", "image": "shots/y.png"}, {"type": "text", "text": "go"}]
    chat = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "click(5, 5)"}]}
    share = {
        "messages": [
            {"role": "user", "content": "<image>go"},
            {"role": "assistant", "content": "click(5, 5)"},
        ],
        "images": ["shots/y.png"],
    }
    qwen = {
        "image": "shots/y.png",
        "conversations": [{"from": "human", "value": "<image>go"}, {"from": "gpt", "value": "click(5, 5)"}],
    }
    swift = {
        **share,
        "messages": [
            {"role": "user", "content": "<image>tap <ref-object>"},
            {"role": "assistant", "content": "<bbox>"},
        ],
        "objects": {"ref": ["OK"], "bbox": [[10, 10, 20, 20]]},
    }
    v2 = [{"img_filename": "x.png", "bbox": [10, 10, 5, 5], "instruction": "go"}]
    pro = [
        {
            "img_filename": "x.png",
            "bbox": [10, 10, 20, 20],
            "img_size": [1000, 500],
            "instruction": "go",
            "ui_type": "icon",
        }
    ]
    alpaca = {"instruction": "go", "input": "", "output": "click(5, 5)", "images": ["shots/y.png"]}
    actor = {
        "image": "shots/y.png",
        "conversations": [
            {"from": "human", "value": "<image>go"},
            {"from": "gpt", "value": "<ACTION_PLACEHOLDER>", "bbox_gt": [0.1, 0.1, 0.2, 0.2]},
        ],
    }
    files = {
        "chat": chat,
        "sharegpt": share,
        "qwen": qwen,
        "objects": swift,
        "alpaca": alpaca,
        "actor": actor,
    }
    for name, row in files.items():
        (folder / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    (folder / "v2.json").write_text(json.dumps(v2))
    (folder / "pro.json").write_text(json.dumps(pro))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist([{**share, "messages": json.dumps(share["messages"])}]), folder / "s.parquet"
    )
    shots = "shots/y.png"
    return [
        ("chat", "chat.jsonl", shots),
        ("sharegpt", "sharegpt.jsonl", shots),
        ("qwen", "qwen.jsonl", shots),
        ("sharegpt", "objects.jsonl", shots),
        ("alpaca", "alpaca.jsonl", shots),
        ("gui-actor", "actor.jsonl", shots),
        ("hf", "s.parquet", shots),
        ("screenspot", "v2.json", "images/x.png"),
        ("screenspot-pro", "pro.json", "images/x.png"),
    ]


def test_relative_data_paths_with_folders_resolve_images_once_for_every_format(tmp_path, monkeypatch):
    folder = tmp_path / "data" / "ss"
    files = _write_every_format(folder)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    for fmt, name, image in files:
        (record,) = samples.read(f"data/ss/{name}", fmt=fmt)
        assert record.images == [str(folder / image)], fmt
    monkeypatch.chdir(tmp_path / "elsewhere")  # the paths a record holds mean the same file anywhere
    for fmt, name, image in files:
        (record,) = samples.read(folder / name, fmt=fmt)
        assert record.images == [str(folder / image)], fmt


def test_formats_share_one_path_rule():
    assert "_image_path" not in vars(formats) and "_image_size" not in vars(formats)
    assert "image_size" not in vars(scoring)


# -- checked before compute: exit 2 and one line -------------------------------------------------------


def test_user_mistakes_in_scoring_are_one_line_and_exit_2(tmp_path, monkeypatch, raylora_cli):
    folder = tmp_path / "data" / "ss"
    _write_every_format(folder)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_bytes(b'{"index": 0, "output": "click(1, 1) caf\xe9"}\n')
    (tmp_path / "ok.jsonl").write_text('{"index": 0, "output": "click(1, 1)"}\n')
    pro = json.loads((folder / "pro.json").read_text())
    (folder / "wrong.json").write_text(json.dumps([{**pro[0], "img_size": [1920, 1080]}]))
    twice = (folder / "chat.jsonl").read_text().strip()
    (folder / "dup.jsonl").write_text(
        "".join(json.dumps({**json.loads(twice), "id": 7}) + "\n" for _ in range(2))
    )
    cases = [
        (
            ("ok.jsonl", "--data", "data/ss/v2.json", "--coordinates", "resized-pixels"),
            "--coordinates: resized-pixels",
        ),
        (("p.jsonl", "--data", "data/ss/v2.json"), "p.jsonl:1: not UTF-8"),
        (("ok.jsonl", "--data", "data/ss/wrong.json"), "wrong.json[0]: img_size [1920, 1080] differs"),
        (("ok.jsonl", "--data", "data/ss/dup.jsonl"), "dup.jsonl:2: id 7 is also the id of"),
    ]
    for args, needle in cases:
        code, _, err = raylora_cli("score", *args)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err


def test_validate_names_an_image_the_processor_would_refuse(tmp_path):
    _png(tmp_path / "wide.png", (4020, 20))
    row = {
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": "wide.png"}]},
            {"role": "assistant", "content": "click(5, 5)"},
        ]
    }
    (tmp_path / "d.jsonl").write_text(json.dumps(row) + "\n")
    (problem,) = samples.problems(tmp_path / "d.jsonl")
    assert problem.where == f"{tmp_path / 'd.jsonl'}:1" and "aspect ratio of 201" in problem.message


def test_answers_all_within_0_1_under_0_1000_are_named(tmp_path):
    _png(tmp_path / "s.png", (200, 100))
    with (tmp_path / "u.jsonl").open("w") as f:
        for x in (0.2, 0.7):
            user = [{"type": "image", "image": "s.png"}, {"type": "text", "text": "go"}]
            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "user", "content": user},
                            {"role": "assistant", "content": f"click({x}, 0.5)"},
                        ]
                    }
                )
                + "\n"
            )
    with pytest.warns(samples.CoordinateWarning, match="u.jsonl: every coordinate lies within 0–1"):
        samples.read(tmp_path / "u.jsonl")


def test_category_fields_of_any_format_split_the_report(tmp_path):
    _png(tmp_path / "s.png", (200, 100))
    with (tmp_path / "c.jsonl").open("w") as f:
        for platform in ("android", "ios"):
            turns = [
                {"role": "user", "content": "<image>go"},
                {"role": "assistant", "content": "click(500, 500)"},
            ]
            f.write(
                json.dumps({"messages": turns, "images": ["s.png"], "platform": platform, "note": "x"}) + "\n"
            )
    read = samples.read(tmp_path / "c.jsonl")
    report = scoring.summarize([scoring.score("click(1, 1)", scoring.goal(r, "qwen3vl")) for r in read])
    assert set(report["by"]) == {"platform"} and set(report["by"]["platform"]) == {"android", "ios"}
    only = samples.read(tmp_path / "c.jsonl", categories=["note"])
    assert [r.categories for r in only] == [{"note": "x"}, {"note": "x"}]
