"""Tests for the embedded tiny model and synthetic GUI grounding data."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import pathlib
import warnings
from contextlib import contextmanager

import pytest

from raylora import builtin, environment


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> pathlib.Path:
    return builtin.ensure_tiny_model(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def loaded(model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    with _captured_warnings() as captured:
        model = AutoModelForImageTextToText.from_pretrained(model_dir)
        processor = AutoProcessor.from_pretrained(model_dir)
    return model, processor, captured


@contextmanager
def _captured_warnings():
    """Collect Python warnings and transformers log records at WARNING and above."""
    from transformers.utils import logging as hf_logging

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    root = hf_logging.get_logger("transformers")
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    root.addHandler(handler)
    captured: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            yield captured
        captured.extend(str(record.message) for record in records)
        captured.extend(line for line in stream.getvalue().splitlines() if line.strip())
    finally:
        root.removeHandler(handler)
        hf_logging.set_verbosity(previous)


def _first_record(train_jsonl: pathlib.Path):
    from PIL import Image

    record = json.loads(train_jsonl.read_text().splitlines()[0])
    image = Image.open(train_jsonl.parent / record["messages"][0]["content"][0]["image"]).convert("RGB")
    return record, image


def _tree_digest(root: pathlib.Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_model_loads_through_auto_classes_without_warnings(loaded):
    model, processor, captured = loaded
    assert type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(processor).__name__ == "Qwen3VLProcessor"
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessor"
    assert type(processor.video_processor).__name__ == "Qwen3VLVideoProcessor"
    assert captured == []
    assert next(model.parameters()).dtype.is_floating_point
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_config_token_ids_match_tokenizer(loaded):
    model, processor, _ = loaded
    tokenizer, config = processor.tokenizer, model.config
    assert (
        config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>") == processor.image_token_id
    )
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tokenizer.convert_tokens_to_ids("<|vision_end|>")
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    for holder in (config, config.text_config, model.generation_config):
        assert holder.eos_token_id == tokenizer.eos_token_id
        assert holder.pad_token_id == tokenizer.pad_token_id
        assert holder.bos_token_id is None
    assert config.text_config.vocab_size >= len(tokenizer)


def test_tokenizer_round_trips_and_keeps_special_tokens_whole(loaded):
    _, processor, _ = loaded
    tokenizer = processor.tokenizer
    text = "<|im_start|>assistant\nclick(412, 230)<|im_end|>"
    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(tokenizer("Grüße, 世界!").input_ids) == "Grüße, 世界!"


def test_chat_template_matches_qwen_layout(loaded):
    _, processor, _ = loaded
    messages = [
        {
            "role": "user",
            "content": [{"type": "image", "image": "a.png"}, {"type": "text", "text": "click the OK button"}],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "click(1, 2)"}]},
    ]
    full = processor.apply_chat_template(messages, tokenize=False)
    assert full == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>click the OK button<|im_end|>\n"
        "<|im_start|>assistant\nclick(1, 2)<|im_end|>\n"
    )
    prompt = processor.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    plain = processor.apply_chat_template([{"role": "system", "content": "be brief"}], tokenize=False)
    assert plain == "<|im_start|>system\nbe brief<|im_end|>\n"


def test_processor_batch_trains_and_generates(loaded, tmp_path):
    import torch

    model, processor, _ = loaded
    record, image = _first_record(builtin.ensure_gui_dataset(tmp_path, n_train=2, n_eval=1)[0])
    text = processor.apply_chat_template(record["messages"], tokenize=False)
    batch = processor(text=[text], images=[image], return_tensors="pt")
    assert {"input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"} <= set(
        batch
    )
    t, h, w = batch["image_grid_thw"][0].tolist()
    assert (t, h, w) == (1, image.height // 16, image.width // 16)
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == t * h * w // 4

    model.zero_grad()
    loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0
    model.zero_grad()

    prompt = processor.apply_chat_template(record["messages"][:1], tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    with torch.no_grad(), _captured_warnings() as captured:
        generated = model.generate(**inputs, max_new_tokens=4)
    assert generated.shape[1] > inputs["input_ids"].shape[1]
    assert captured == []


def test_ensure_tiny_model_is_idempotent(model_dir):
    weights = model_dir / "model.safetensors"
    before = (model_dir.stat().st_mtime_ns, weights.stat().st_mtime_ns)
    assert builtin.ensure_tiny_model(model_dir.parents[1]) == model_dir
    assert (model_dir.stat().st_mtime_ns, weights.stat().st_mtime_ns) == before
    assert (
        json.loads((model_dir / builtin.MARKER_FILE).read_text())["format_version"] == builtin.FORMAT_VERSION
    )


def test_tiny_model_is_identical_across_homes(model_dir, tmp_path):
    other = builtin.ensure_tiny_model(tmp_path)
    assert other != model_dir
    assert _tree_digest(other) == _tree_digest(model_dir)


def test_gui_dataset_records_have_documented_shape(tmp_path):
    from PIL import Image

    train, eval_ = builtin.ensure_gui_dataset(tmp_path)
    assert (
        train.parent == eval_.parent == tmp_path / "data" / f"gui-grounding-seed0-v{builtin.FORMAT_VERSION}"
    )
    splits = {
        name: [json.loads(line) for line in path.read_text().splitlines()]
        for name, path in (("train", train), ("eval", eval_))
    }
    assert (len(splits["train"]), len(splits["eval"])) == (64, 16)
    images = set()
    for record in splits["train"] + splits["eval"]:
        user, assistant = record["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        image_item, text_item = user["content"]
        assert image_item["type"] == "image" and text_item["type"] == "text"
        assert text_item["text"].startswith("click the ")
        assert text_item["text"].split(" ", 2)[2].rsplit(" ", 1)[-1] in {
            "button",
            "checkbox",
            "field",
            "icon",
        }
        x, y = map(int, assistant["content"][0]["text"].removeprefix("click(").removesuffix(")").split(", "))
        x0, y0, x1, y1 = record["bbox"]
        assert 0 <= x0 <= x <= x1 <= 1000 and 0 <= y0 <= y <= y1 <= 1000
        path = train.parent / image_item["image"]
        assert not pathlib.PurePath(image_item["image"]).is_absolute() and path.is_file()
        with Image.open(path) as image:
            assert image.mode == "RGB"
            assert all(128 <= side <= 256 and side % 32 == 0 for side in image.size)
        images.add(image_item["image"])
    assert len(images) == 80


def test_gui_dataset_is_deterministic_by_seed(tmp_path):
    first = builtin.ensure_gui_dataset(tmp_path / "a", seed=3, n_train=6, n_eval=2)[0].parent
    again = builtin.ensure_gui_dataset(tmp_path / "b", seed=3, n_train=6, n_eval=2)[0].parent
    other = builtin.ensure_gui_dataset(tmp_path / "a", seed=4, n_train=6, n_eval=2)[0].parent
    assert _tree_digest(first) == _tree_digest(again)
    assert _tree_digest(first) != _tree_digest(other)
    assert first.name == f"gui-grounding-seed3-n6-2-v{builtin.FORMAT_VERSION}"


def test_gui_dataset_is_not_rebuilt_and_replaces_incomplete_dirs(tmp_path):
    train, _ = builtin.ensure_gui_dataset(tmp_path, n_train=2, n_eval=1)
    mtime = train.stat().st_mtime_ns
    assert builtin.ensure_gui_dataset(tmp_path, n_train=2, n_eval=1)[0].stat().st_mtime_ns == mtime

    broken = builtin.ensure_gui_dataset(tmp_path, seed=1, n_train=2, n_eval=1)[0].parent
    (broken / builtin.MARKER_FILE).unlink()
    (broken / "train.jsonl").write_text("garbage\n")
    train, _ = builtin.ensure_gui_dataset(tmp_path, seed=1, n_train=2, n_eval=1)
    assert len(train.read_text().splitlines()) == 2 and json.loads(train.read_text().splitlines()[0])
    assert [p.name for p in train.parents[1].iterdir() if p.name.startswith(".")] == []


def test_resolvers(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYLORA_HOME", str(tmp_path))
    assert environment.home() == tmp_path
    assert builtin.is_builtin(builtin.TINY_MODEL) and not builtin.is_builtin("Qwen/Qwen3-VL-2B-Instruct")
    assert builtin.resolve_model("Qwen/Qwen3-VL-2B-Instruct") == "Qwen/Qwen3-VL-2B-Instruct"
    assert builtin.resolve_data("my/train.jsonl", "train") == "my/train.jsonl"
    train = builtin.resolve_data(builtin.GUI_DATA, "train", seed=2)
    assert train == str(tmp_path / "data" / f"gui-grounding-seed2-v{builtin.FORMAT_VERSION}" / "train.jsonl")
    assert builtin.resolve_data(builtin.GUI_DATA, "eval", seed=2).endswith("eval.jsonl")
    with pytest.raises(ValueError, match="builtin:tiny-qwen3-vl"):
        builtin.resolve_model("builtin:foo")
    with pytest.raises(ValueError, match="builtin:gui-grounding"):
        builtin.resolve_data("builtin:foo", "train")
    with pytest.raises(ValueError, match="split"):
        builtin.resolve_data(builtin.GUI_DATA, "test")
    with pytest.raises(ValueError):
        builtin.resolve_model(builtin.GUI_DATA)


def test_default_home(monkeypatch):
    monkeypatch.delenv("RAYLORA_HOME", raising=False)
    assert environment.home() == pathlib.Path.home() / ".cache" / "raylora"


def _ensure_all(home: str, barrier, results) -> None:
    import transformers  # noqa: F401  -- import before the barrier so the builds themselves race

    barrier.wait()
    model = builtin.ensure_tiny_model(pathlib.Path(home))
    train, _ = builtin.ensure_gui_dataset(pathlib.Path(home), n_train=4, n_eval=2)
    results.put((str(model), str(train)))


@pytest.mark.slow
def test_concurrent_ensure_yields_one_valid_copy(tmp_path, model_dir):
    from transformers import AutoModelForImageTextToText

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(3), context.Queue()
    workers = [context.Process(target=_ensure_all, args=(str(tmp_path), barrier, results)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    paths = {results.get(timeout=5) for _ in workers}
    assert len(paths) == 1
    model_path = pathlib.Path(next(iter(paths))[0])
    assert [p.name for p in (tmp_path / "models").iterdir()] == [model_path.name]
    assert [p.name for p in (tmp_path / "data").iterdir()] == [
        f"gui-grounding-seed0-n4-2-v{builtin.FORMAT_VERSION}"
    ]
    assert _tree_digest(model_path) == _tree_digest(model_dir)
    assert (
        type(AutoModelForImageTextToText.from_pretrained(model_path)).__name__
        == "Qwen3VLForConditionalGeneration"
    )


def _ensure_as_rank(rank: int, home: str, port: int, results) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        if rank == 1:  # a worker on another node reaches the build first
            results.put(str(builtin.ensure_tiny_model(home)))
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_a_worker_of_a_distributed_group_builds_a_complete_model(tmp_path, model_dir):
    """transformers saves nothing but on rank 0 of a process group: rank 1's build must still be whole."""
    from mlflow_server import free_port

    context = multiprocessing.get_context("spawn")
    results, port = context.Queue(), free_port()
    ranks = [context.Process(target=_ensure_as_rank, args=(r, str(tmp_path), port, results)) for r in (0, 1)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(timeout=300)
    assert [rank.exitcode for rank in ranks] == [0, 0]
    built = pathlib.Path(results.get(timeout=5))
    assert _tree_digest(built) == _tree_digest(model_dir)
