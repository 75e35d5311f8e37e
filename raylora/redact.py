"""Credentials never leave the process: the one redaction every boundary applies (what raylora prints,
writes to the study folder and sends to MLflow).

A URI keeps its scheme, host, path and harmless query parameters; its user info (``user:secret@``) and
every query parameter whose name holds one of :data:`WORDS` go. Text is redacted URI by URI, values
(spec dicts, summaries) string by string, and params by name too::

    s3://KEY:SECRET@bucket/p?endpoint_override=h:9000&secret_key=S   →   s3://bucket/p?endpoint_override=h:9000
    postgresql://user:pw@db/mlflow                                     →   postgresql://db/mlflow
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

WORDS = ("key", "secret", "token", "password", "passwd", "credential", "signature", "sig", "auth")
"""Words naming a credential: in a query parameter anywhere in its name (``X-Amz-Signature``), in a param
as one of its ``_``/``.``/``-`` separated words (``db_password``, ``HF_TOKEN``, not ``max_new_tokens``)."""

_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")


def is_secret(name: str) -> bool:
    """Whether a param or setting named ``name`` may hold a credential (``HF_TOKEN``, ``api_key``)."""
    words = re.split(r"[^a-z0-9]+", name.lower())
    return any(word in WORDS or word.endswith(("password", "passwd", "secret", "apikey")) for word in words)


def _secret_query(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in WORDS if word != "sig") or lowered in ("sig", "sv-sig")


def redact(uri: str) -> str:
    """``uri`` without user info and without query parameters that name a key, secret or token; the rest
    as written (text that is not a URI is returned as it is)."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    end = min((i for i in map(rest.find, "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end].rpartition("@")[2], rest[end:]
    path, question, after = tail.partition("?")
    query, hash_, fragment = after.partition("#")
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(_secret_query(k) for k, _ in pairs):
        query = urlencode([(k, v) for k, v in pairs if not _secret_query(k)], safe=":/")
        question = "?" if query else ""
    return f"{scheme}://{authority}{path}{question}{query}{hash_}{fragment}"


def text(value: str) -> str:
    """``value`` with every URI in it redacted (a log line, an error message, a printed table)."""
    if "://" not in value:
        return value
    return _URI.sub(lambda m: redact(m.group(0)), value)


def values(data: Any) -> Any:
    """``data`` (dicts, lists, strings, numbers) with every string redacted as :func:`text` does."""
    if isinstance(data, str):
        return text(data)
    if isinstance(data, dict):
        return {k: values(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(values(v) for v in data)
    return data


def scrub(params: dict[str, Any]) -> dict[str, Any]:
    """Params without credentials: secret-named keys dropped, strings redacted."""
    return {k: values(v) for k, v in params.items() if not is_secret(k)}


class Stream:
    """A text stream that redacts what is written to it (installed over stdout and stderr by the command
    line, so MLflow's, Ray's and raylora's own lines all pass through :func:`text`)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, data: str) -> int:
        self._stream.write(text(data) if isinstance(data, str) else data)
        return len(data)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)
