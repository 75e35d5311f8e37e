"""What never leaves raylora in a printed URI, a summary or MLflow: credentials.

A URI's user info and any query parameter, or any param, whose name holds one of :data:`WORDS` is
dropped (``s3://KEY:SECRET@bucket?secret_key=...`` is shown as ``s3://bucket``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

WORDS = ("key", "secret", "token", "password", "passwd", "credential")


def is_secret(name: str) -> bool:
    """Whether a parameter named ``name`` may hold a credential."""
    return any(word in name.lower() for word in WORDS)


def redact(uri: str) -> str:
    """``uri`` without user info and without query parameters that name a key, secret or token."""
    if "://" not in uri:
        return uri
    parts = urlsplit(uri)
    netloc = parts.netloc.rpartition("@")[2]
    query = [(k, v) for k, v in parse_qsl(parts.query) if not is_secret(k)]
    return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, safe=":")))


def scrub(values: dict[str, Any]) -> dict[str, Any]:
    """Params without credentials: secret-named keys dropped, URIs redacted."""
    return {k: redact(v) if isinstance(v, str) else v for k, v in values.items() if not is_secret(k)}
