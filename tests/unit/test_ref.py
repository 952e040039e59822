"""bakery.ref: the one reference type. Parse and str round-trip; the fleet reference on top; what each former
parser (promote.parse_ref, definitions.parse_upstream, scan's host lookup, devstack's image split, the SARIF URI)
now reads through it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bakery.definitions import parse_upstream
from bakery.errors import InputError
from bakery.ref import DOCKER_HUB, FleetRef, Ref, is_loopback, mirrored, normalise_host, split_image
from bakery.reports import _artifact_uri

D = "sha256:" + "ab" * 32

COMPONENT = st.from_regex(r"[a-z0-9]{1,8}([._-][a-z0-9]{1,6})?", fullmatch=True)
HOST = st.one_of(
    st.from_regex(r"[a-z]([a-z0-9-]{0,9}[a-z0-9])?\.[a-z]{2,6}(:[1-9][0-9]{1,4})?", fullmatch=True),  # a DNS label ends alnum
    st.from_regex(r"127\.0\.0\.[1-9]:[1-9][0-9]{3}", fullmatch=True),
    st.just("localhost:5000"),
)
TAG = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
DIGEST = st.from_regex(r"sha256:[0-9a-f]{64}", fullmatch=True)


@settings(max_examples=100, deadline=None)
@given(host=HOST, path=st.lists(COMPONENT, min_size=1, max_size=4), tag=st.none() | TAG,
       digest=st.none() | DIGEST)
def test_parse_and_str_round_trip(host: str, path: list[str], tag: str | None, digest: str | None) -> None:
    text = f"{host}/{'/'.join(path)}" + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    ref = Ref.parse(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (host, "/".join(path), tag, digest)
    assert str(ref) == text
    assert Ref.parse(str(ref)) == ref
    assert ref.family == path[-1]


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), [
    ("debian:12", DOCKER_HUB, "debian", "12", None),
    ("library/debian", DOCKER_HUB, "library/debian", None, None),
    ("127.0.0.1:5001/team/python:3.11@" + D, "127.0.0.1:5001", "team/python", "3.11", D),
    ("localhost/x", "localhost", "x", None, None),
    ("reg.example/a/b/c@" + D, "reg.example", "a/b/c", None, D),
])
def test_docker_rules(text: str, registry: str, repository: str, tag: str | None, digest: str | None) -> None:
    r = Ref.parse(text)
    assert (r.registry, r.repository, r.tag, r.digest) == (registry, repository, tag, digest)


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty"),
    ("reg.example/Upper/Case:1", "not a repository path"),
    ("reg.example/x@sha256:abc", "not a sha256 digest"),
    ("reg.example/x:-bad", "not a valid tag"),
    ("library/debian:12", None),  # fine without require_registry
])
def test_refusals_name_the_problem(text: str, message: str | None) -> None:
    if message is None:
        Ref.parse(text)
        with pytest.raises(InputError, match="not a full image reference"):
            Ref.parse(text, require_registry=True)
        return
    with pytest.raises(InputError, match=message):
        Ref.parse(text)


def test_fleet_ref() -> None:
    assert FleetRef.parse("python:3.11-slim") == FleetRef("python", "3.11-slim")
    assert FleetRef.parse("127.0.0.1:5001/ns/python:3.11@" + D) == FleetRef("python", "3.11", D)
    assert FleetRef.parse("python@" + D).image == "python"
    assert FleetRef.parse("python", require_tag_or_digest=False) == FleetRef("python")
    with pytest.raises(InputError, match="name a version"):
        FleetRef.parse("python")
    with pytest.raises(InputError, match="not an image reference"):
        FleetRef.parse("Python:1")
    assert split_image("python:3.11-slim") == ("python", "3.11-slim")


def test_loopback_and_hosts() -> None:
    assert is_loopback("127.0.0.1:5001") and is_loopback("localhost:5000") and is_loopback("[::1]:5000")
    assert not is_loopback("reg.example:5000") and not is_loopback("10.0.0.1")
    assert normalise_host("https://index.docker.io/v1/") == DOCKER_HUB
    assert mirrored("docker.io/library/debian:12", {"docker.io": "127.0.0.1:5000"}) == "127.0.0.1:5000/library/debian:12"
    assert mirrored("index.docker.io/x:1", {"docker.io": "m:1/"}) == "m:1/x:1"
    assert mirrored("quay.io/x:1", {"docker.io": "m"}) == "quay.io/x:1"


def test_former_parsers_read_through_ref() -> None:
    assert parse_upstream("docker.io/library/debian:12@" + D) == ("docker.io/library/debian", "12", D)
    assert parse_upstream("debian:12") is None  # definitions name upstream images with their registry
    assert _artifact_uri("127.0.0.1:5001/team/python:3.12@" + D) == "team/python"
    assert _artifact_uri("python:3.12") == "python"
