"""One redaction at every boundary (issue 26): generated URIs, texts and values lose their credentials and
keep everything else, against a reference built from the URI's parts; MLflow filter values are quoted so
MLflow reads back the very value."""

from __future__ import annotations

import io
import json
from urllib.parse import quote

from hypothesis import given, settings
from hypothesis import strategies as st

from raylora import redact

# What a user types: percent-encoded user info (RFC 3986), hosts, paths, query parameters.
# Lower case only, so no generated host, path or value can spell a planted credential (upper case).
_SAFE = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._~", min_size=1)
_SECRET_VALUE = _SAFE.map(lambda s: f"S3CR3T{s}")
_USER = _SAFE.map(lambda s: f"U5ER{s}")
_SCHEMES = st.sampled_from(["http", "https", "s3", "gs", "postgresql", "mysql+pymysql", "databricks"])
_HOSTS = st.sampled_from(["host", "127.0.0.1:5000", "db.example.com", "bucket", "[::1]:80"])
_PATHS = st.lists(_SAFE, max_size=3).map(lambda parts: "".join(f"/{p}" for p in parts))
_SECRET_NAMES = st.sampled_from(
    ["token", "secret_key", "X-Amz-Signature", "password", "api_key", "AccessKey", "sig", "auth"]
)
_PLAIN_NAMES = st.sampled_from(["endpoint_override", "scheme", "region", "mode", "a", "page"])


@st.composite
def _uris(draw):
    """A URI with credentials planted, and the same URI as it must read once redacted (the reference)."""
    scheme, host, path = draw(_SCHEMES), draw(_HOSTS), draw(_PATHS)
    user = draw(st.none() | st.tuples(_USER, st.none() | _SECRET_VALUE))
    params = draw(
        st.lists(
            st.tuples(st.booleans(), _PLAIN_NAMES, _SECRET_NAMES, _SAFE, _SECRET_VALUE),
            max_size=4,
        )
    )
    userinfo = ""
    secrets = []
    if user is not None:
        name, password = user
        userinfo = quote(name) + (f":{password}" if password else "") + "@"
        secrets.append(password or name)
    query, kept = [], []
    for secret, plain_name, secret_name, value, secret_value in params:
        if secret:
            query.append(f"{secret_name}={secret_value}")
            secrets.append(secret_value)
        else:
            query.append(f"{plain_name}={value}")
            kept.append(f"{plain_name}={value}")
    planted = f"{scheme}://{userinfo}{host}{path}" + (f"?{'&'.join(query)}" if query else "")
    if len(kept) == len(query):
        reference = f"{scheme}://{host}{path}" + (f"?{'&'.join(query)}" if query else "")
    else:
        reference = f"{scheme}://{host}{path}" + (f"?{'&'.join(kept)}" if kept else "")
    return planted, reference, secrets


@given(_uris())
def test_a_uri_loses_its_user_info_and_secret_parameters_and_keeps_the_rest(case):
    planted, reference, secrets = case
    shown = redact.redact(planted)
    assert shown == reference
    for secret in secrets:
        assert secret not in shown


@given(_uris(), st.sampled_from(["MLflow unreachable at {} (ConnectionError)", "{}", "see '{}'.", "a {} b"]))
def test_every_uri_in_a_line_of_text_is_redacted(case, line):
    planted, reference, secrets = case
    shown = redact.text(line.format(planted))
    assert shown == line.format(reference)


@given(st.lists(_uris(), min_size=1, max_size=3))
def test_nested_values_and_printed_streams_carry_no_credential(cases):
    data = {"spec": {"tracking": {"tracking_uri": cases[0][0]}, "data": [c[0] for c in cases]}, "n": 3}
    written = json.dumps(redact.values(data))
    stream = io.StringIO()
    redact.Stream(stream).write(" ".join(c[0] for c in cases) + "\n")
    for _, _, secrets in cases:
        for secret in secrets:
            assert secret not in written
            assert secret not in stream.getvalue()
    assert redact.values(data)["n"] == 3


def test_a_uri_without_credentials_is_returned_as_written():
    for uri in (
        "sqlite:////abs/mlflow.db",
        "sqlite:///rel/mlflow.db?mode=ro",
        "file:///x/y",
        "http://h:5000",
    ):
        assert redact.redact(uri) == uri
    assert redact.text("no uri here: a@b") == "no uri here: a@b"


def test_params_named_like_credentials_are_dropped_and_others_kept():
    kept = redact.scrub(
        {
            "HF_TOKEN": "hf_x",
            "db_password": "p",
            "api_key": "k",
            "tracking.aws_secret_access_key": "s",
            "eval.max_new_tokens": "24",
            "tracking.tracking_uri": "http://u:S3CR3T@h:5000",
        }
    )
    assert kept == {"eval.max_new_tokens": "24", "tracking.tracking_uri": "http://h:5000"}


# -- MLflow filter strings ---------------------------------------------------------------------------

_NAMES = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=30
).filter(lambda s: s.strip() == s)


@given(_NAMES)
def test_a_quoted_name_is_read_back_by_mlflow_as_the_same_value(name):
    from mlflow.utils.search_utils import SearchUtils

    from raylora.errors import UserError
    from raylora.tracking import tags

    try:
        query = tags.query({tags.STUDY: name, tags.TRIAL_ID: "t000"})
    except UserError:  # only what no MLflow literal can hold: both quotes, or a backslash escaping one
        assert ("'" in name and '"' in name) or "\\" in name
        return
    parsed = SearchUtils.parse_search_filter(query)
    assert [(p["key"], p["value"]) for p in parsed] == [(tags.STUDY, name), (tags.TRIAL_ID, "t000")]


def test_a_name_holding_both_quotes_is_a_user_error_not_a_broken_filter():
    import pytest

    from raylora.errors import UserError
    from raylora.tracking import tags

    with pytest.raises(UserError, match="MLflow search"):
        tags.query({tags.STUDY: 'it\'s "x"'})


@settings(max_examples=50)
@given(_uris())
def test_a_study_spec_loses_its_tracking_credentials_and_nothing_else(case):
    """What Tune, the workers and the study's files get: the spec as written, with its tracking URI as
    redacted (the reference above), and its search space whole (a password in ``tracking.tracking_uri``
    once made it one trial's concrete spec: the study searched nothing)."""
    from pathlib import Path

    import yaml

    from raylora.spec import Spec, space
    from raylora.study.driver import _without_credentials

    planted, reference, _ = case
    quickstart = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"
    written = yaml.safe_load(quickstart.read_text())
    written["tracking"] = {"tracking_uri": planted}
    expected = json.loads(json.dumps(written))
    expected["tracking"]["tracking_uri"] = reference

    given_spec = _without_credentials(Spec.from_dict(written))
    assert given_spec.to_dict() == Spec.from_dict(expected).to_dict()
    assert given_spec.search == Spec.from_dict(written).search and space.size(given_spec) is None
