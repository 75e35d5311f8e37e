"""GUI data and its scoring: how a dataset is read, what a model's answer means, and how it scores.
Pure Python at import (no torch), used by training, ``raylora eval``, ``raylora score`` and the base-model
score alike, so every path reads and scores the same way.

    formats       the dataset formats teams have (chat, sharegpt, qwen, screenspot, hf, ...) → chat rows
    readers       LLaMA-Factory alpaca, image items in every spelling; video refused by record
    tools         tool calls and responses (sharegpt, ms-swift, OpenAI) as Qwen's template renders them
    guiactor      GUI-Actor records: bbox_gt the reference, the answer the template's
    tfrecord      TFRecord files and tf.train.Example / protobuf messages, read without TensorFlow
    episodes      the steps the episode and element-list readers yield, and what they share
    androidcontrol  AndroidControl's TFRecord episodes (goal, step instructions, accessibility boxes)
    odyssey       GUI-Odyssey's episode JSON files (0–1000)
    aguvis        Aguvis stage 1 grounding and stage 2 planning records (pyautogui / mobile calls, 0–1)
    elements      grounding element lists: OS-Atlas, ShowUI (AMEX)
    convert       ``raylora data convert``: steps → chat records in a template and convention (JSONL)
    samples       chat rows → checked Samples (conversation, images, target box); screenshots read and decoded
    coordinates   the coordinate conventions (qwen3vl 0–1000, mai-ui 0–999, pixels, ...) and conversions
    templates     answer templates: a target box → the supervised answer (read back by actions)
    calls         call expressions in a model's text (``click(start_box='(1,2)')``), read as call syntax
    actions       a model's output text → one Action (click, type, scroll, ...)
    scoring       Actions against Samples: click/type/step accuracy, format errors, intervals, McNemar
"""
