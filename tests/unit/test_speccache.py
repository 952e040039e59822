"""bakery.speccache: one image's validated definition from the cache is exactly what loading the fleet gives.

A hit must equal ``load_fleet(project).specs.get(key)`` for the same repository (every field of the spec: the
policy the scan applies, and the rest); any change to what the validation reads (a definition's bytes, another
definition, a template, the configuration) is a miss, answered by the full load with its own errors.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bakery import speccache
from bakery.config import load_project
from bakery.definitions import load_fleet
from bakery.errors import ValidationError
from bakery.model import SEVERITIES, ImageKey

REPO = Path(__file__).resolve().parents[2]
CONFIG = "environments:\n  dev: {registry: '127.0.0.1:9/dev'}\n  prod: {registry: '127.0.0.1:9/prod'}\n"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BAKERY_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _project(root: Path):
    return load_project(root / "bakery.yaml", cwd=root, environ={})


def _never(project):
    raise AssertionError("the fleet was loaded: a cache hit was expected")


@pytest.fixture
def example(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "base-images", root / "base-images")
    shutil.copytree(REPO / "templates", root / "templates")
    (root / "bakery.yaml").write_text(CONFIG)
    return root


def test_the_example_fleet_from_the_cache_equals_the_full_load(example: Path) -> None:
    project = _project(example)
    _edit(example / "base-images" / "python.yaml", "name: python\n",
          "name: python\npolicy: {severity: critical, ignore: [{id: CVE-2099-1, reason: not reachable}]}\n")
    specs = load_fleet(project).specs
    assert specs[ImageKey("python", "3.11")].policy == {"severity": "critical",
                                                        "ignore": [{"id": "CVE-2099-1", "reason": "not reachable"}]}
    assert [e.id for e in specs[ImageKey("python", "3.11")].ignore] == ["CVE-2099-1"]  # validated once, kept
    first = next(iter(specs))
    assert speccache.lookup(project, first) is speccache.MISS  # nothing stored yet
    assert speccache.spec_for(project, first, load_fleet) == specs[first]  # loads and stores
    for key, spec in specs.items():
        assert speccache.spec_for(project, key, _never) == spec  # every image from the cache, field for field
    assert speccache.spec_for(project, ImageKey("python", "9.99"), _never) is None  # not in the fleet: None too
    # a process that reads the configuration back from its cache (the CLI's) hits the same entry
    from bakery.configview import load_project_fast

    fast = load_project_fast(example / "bakery.yaml", cwd=example, environ={})
    assert fast is not None and speccache.spec_for(fast, first, _never) == specs[first]


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("change", ["own file", "other file", "template", "configuration", "new file",
                                    "template through a directory symlink"])
def test_any_change_to_what_the_validation_reads_is_a_miss(example: Path, change: str) -> None:
    project = _project(example)
    key = ImageKey("python", "3.11")
    speccache.spec_for(project, key, load_fleet)
    assert speccache.lookup(project, key) is not speccache.MISS
    if change == "own file":
        _edit(example / "base-images" / "python.yaml", "name: python\n", "name: python\npolicy: {severity: LOW}\n")
    elif change == "other file":
        _edit(example / "base-images" / "nginx.yaml", "\n", "\n# a comment\n")
    elif change == "template":
        tpl = next((example / "templates").rglob("*.j2"))
        tpl.write_text(tpl.read_text() + "\n")
    elif change == "template through a directory symlink":  # its content lies outside the keyed tree: no cache
        shutil.move(example / "templates" / "python", example / "shared-python")
        (example / "templates" / "python").symlink_to("../shared-python")
        assert speccache.fleet_key(project) is None
        tpl = example / "shared-python" / "Dockerfile.j2"
        tpl.write_text(tpl.read_text() + "\n")
    elif change == "configuration":
        (example / "bakery.yaml").write_text(CONFIG.replace("/prod", "/production"))
    else:
        (example / "base-images" / "zz.yaml").write_text("name: zz\ntemplate: base\nversions: {}\n")
    project = _project(example) if change == "configuration" else project
    assert speccache.lookup(project, key) is speccache.MISS
    if change == "new file":  # an invalid new definition: the full load's errors, exactly
        with pytest.raises(ValidationError) as full:
            load_fleet(project)
        with pytest.raises(ValidationError) as fast:
            speccache.spec_for(project, key, load_fleet)
        assert fast.value.problems == full.value.problems
        return
    fresh = load_fleet(project).specs[key]
    assert speccache.spec_for(project, key, load_fleet) == fresh
    if change == "own file":
        assert fresh.policy == {"severity": "LOW", "ignore": []}


def test_an_invalid_definition_of_the_image_gives_the_full_loads_errors_after_a_valid_one_was_cached(
        example: Path) -> None:
    project = _project(example)
    key = ImageKey("python", "3.11")
    assert speccache.spec_for(project, key, load_fleet) is not None
    _edit(example / "base-images" / "python.yaml", "name: python\n", "name: python\npolicy: {severity: SOMETIMES}\n")
    with pytest.raises(ValidationError) as full:
        load_fleet(project)
    with pytest.raises(ValidationError) as fast:
        speccache.spec_for(project, key, load_fleet)
    assert fast.value.problems == full.value.problems
    assert any("policy.severity" in p and "SOMETIMES" in p for p in fast.value.problems)
    assert speccache.lookup(project, key) is speccache.MISS  # a fleet with problems is never stored


ignore_entry = st.fixed_dictionaries({"id": st.from_regex(r"CVE-20[0-9]{2}-[0-9]{4,5}", fullmatch=True),
                                      "reason": st.text("abc xyz", min_size=1, max_size=12)},
                                     optional={"package": st.sampled_from(["zlib1g", "openssl"]),
                                               "until": st.dates().map(lambda d: d.isoformat()),
                                               "image": st.sampled_from(["img0:*", "img1"])})
policy = st.none() | st.fixed_dictionaries({}, optional={
    "severity": st.sampled_from(list(SEVERITIES)), "fixable_only": st.booleans(),
    "ignore": st.lists(ignore_entry, max_size=2)})
family = st.tuples(policy, st.lists(st.sampled_from(["1", "1.1", "2", "10"]), min_size=1, max_size=3, unique=True),
                   st.lists(st.sampled_from(["slim", "full"]), max_size=2, unique=True))


def _yaml_value(value) -> str:
    import json

    return json.dumps(value)  # JSON is YAML


@settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(families=st.lists(family, min_size=1, max_size=4))
def test_generated_fleets_from_the_cache_equal_the_full_load(tmp_path_factory, families) -> None:
    root = tmp_path_factory.mktemp("fleet")
    (root / "bakery.yaml").write_text(CONFIG)
    (root / "templates" / "t").mkdir(parents=True)
    (root / "templates" / "t" / "Dockerfile.j2").write_text("FROM {{ parent }}\n")
    (root / "base-images").mkdir()
    for i, (pol, versions, variants) in enumerate(families):
        doc = {"name": f"img{i}", "template": "t",
               "versions": {v: {"parent": "docker.io/library/debian:12" if i == 0 else "img0:" + families[0][1][0],
                                **({"variants": {x: {} for x in variants}} if variants else {})} for v in versions}}
        if pol is not None:
            doc["policy"] = pol
        (root / "base-images" / f"img{i}.yaml").write_text(_yaml_value(doc))
    project = _project(root)
    specs = load_fleet(project).specs
    assert speccache.spec_for(project, next(iter(specs)), load_fleet) is not None
    for key, spec in specs.items():
        got = speccache.spec_for(project, key, _never)
        assert got == spec
        assert got.policy == spec.policy


def test_a_reference_by_name_and_version_resolves_as_the_fleet_does(example: Path) -> None:
    """`bakery scan NAME:VERSION`: the cache answers exactly what ``Fleet.resolve_ref`` resolves to one image;
    every other form (a bare name, an unknown version, a digest) is left to the full load and its messages."""
    project = _project(example)
    fleet = load_fleet(project)
    assert speccache.exactly_named(project, "python:3.11") is None  # nothing stored yet
    speccache.load_and_store(project, load_fleet)
    for key, spec in fleet.specs.items():
        [resolved] = fleet.resolve_ref(str(key))
        assert speccache.exactly_named(project, str(key)) == fleet.get(resolved) == spec
    for other in ("python", "python:9.99", "pyton:3.11", "python@sha256:" + "a" * 64, "x/python:3.11"):
        assert speccache.exactly_named(project, other) is None
