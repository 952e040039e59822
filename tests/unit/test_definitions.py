"""Invalid definitions: each one gives its exact `FILE: FIELD: what is wrong` line(s) and exit 2, never a traceback."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

GOOD_DEF = (Path(__file__).resolve().parents[1] / "fixtures" / "minimal-definition.yaml").read_text()
UP = "docker.io/library/debian:bookworm-slim"
F = "base-images/a.yaml"


def defn(versions: str, *, head: str = "name: a\ntemplate: t\nvariables: {user: app}\n") -> str:
    return f"{head}versions:\n{versions}"


def one(parent: str = UP, extra: str = "") -> str:
    return defn(f'  "1":\n    parent: {parent}\n{extra}')


def family(name: str, parent: str, version: str = "1") -> str:
    return f'name: {name}\ntemplate: t\nvariables: {{user: app}}\nversions:\n  "{version}":\n    parent: {parent}\n'


def var(value: str) -> str:
    return one().replace("{user: app}", f"{{user: {value}}}")


SAFE = "plain values may hold letters, digits, space and . _ + : / = @ , ~ % -"

CASES: list[tuple[str, dict[str, str], list[str]]] = [
    ("unknown-key-suggests", {F: one().replace("template:", "templat:")}, [
        f"{F}: template: required key is missing",
        f"{F}: templat: unknown key (did you mean 'template'?)"]),
    ("unknown-version-key-suggests", {F: defn(f'  "1":\n    parent: {UP}\n    tag: [x]\n')}, [
        f"{F}: versions.1.tag: unknown key (did you mean 'tags'?)"]),
    ("unknown-variant-key-suggests", {F: one(extra="    variants:\n      slim: {variable: {}}\n")}, [
        f"{F}: versions.1.variants.slim.variable: unknown key (did you mean 'variables'?)"]),
    ("missing-name", {F: one().replace("name: a\n", "")}, [f"{F}: name: required key is missing"]),
    ("missing-parent", {F: defn('  "1":\n    tags: [x]\n')}, [f"{F}: versions.1.parent: required key is missing"]),
    ("empty-versions", {F: "name: a\ntemplate: t\nversions: {}\n"}, [f"{F}: versions: must not be empty"]),
    ("version-null", {F: defn('  "1":\n')}, [f"{F}: versions.1: must be a mapping, got null"]),
    ("missing-template-dir", {F: one().replace("template: t", "template: nope")}, [
        f"{F}: template: template 'nope' not found under templates/ (no such directory)"]),
    ("template-without-dockerfile", {"templates/e/README": "x", F: one().replace("template: t", "template: e")}, [
        f"{F}: template: template 'e' not found under templates/ (it holds no Dockerfile.j2 or *.pkr.hcl.j2)"]),
    ("unknown-parent-family", {F: one("bse:12"), "base-images/b.yaml": family("base", UP, "12")}, [
        f"{F}: versions.1.parent: unknown parent 'bse:12': no image family 'bse' in the definitions "
        f"(did you mean 'base:12'?); an upstream image needs its registry, e.g. docker.io/library/bse:12"]),
    ("unknown-parent-version", {F: one("base:13"), "base-images/b.yaml": family("base", UP, "12")}, [
        f"{F}: versions.1.parent: unknown parent 'base:13': 'base' has no version '13' (known: 12)"]),
    ("parent-without-version", {F: one("base"), "base-images/b.yaml": family("base", UP, "12")}, [
        f"{F}: versions.1.parent: 'base' needs a version: NAME:VERSION for a bakery image, "
        f"or a full upstream reference"]),
    ("upstream-without-tag", {F: one("docker.io/library/debian")}, [
        f"{F}: versions.1.parent: 'docker.io/library/debian' names no tag or digest; pin it "
        f"(e.g. docker.io/library/debian:bookworm-slim)"]),
    ("bad-upstream-reference", {F: one("docker.io/Library/Debian:12")}, [
        f"{F}: versions.1.parent: 'docker.io/Library/Debian:12' is not a valid image reference "
        f"(registry/path[:tag][@sha256:…])"]),
    ("bad-upstream-digest", {F: one("docker.io/library/debian@sha256:abc")}, [
        f"{F}: versions.1.parent: 'docker.io/library/debian@sha256:abc' is not a valid image reference "
        f"(registry/path[:tag][@sha256:…])"]),
    ("cycle-of-1", {F: family("a", "a:1")}, [f"{F}: versions.1.parent: dependency cycle: a:1 -> a:1"]),
    ("cycle-of-2", {F: family("a", "b:1"), "base-images/b.yaml": family("b", "a:1")}, [
        f"{F}: versions.1.parent: dependency cycle: a:1 -> b:1 -> a:1"]),
    ("cycle-of-3", {F: family("a", "b:1"), "base-images/b.yaml": family("b", "c:1"),
                    "base-images/c.yaml": family("c", "a:1")}, [
        f"{F}: versions.1.parent: dependency cycle: a:1 -> b:1 -> c:1 -> a:1"]),
    ("cycle-below-a-root", {"base-images/r.yaml": family("r", "b:1"), F: family("a", "b:1"),
                            "base-images/b.yaml": family("b", "a:1")}, [
        f"{F}: versions.1.parent: dependency cycle: a:1 -> b:1 -> a:1"]),
    ("duplicate-family", {F: GOOD_DEF, "base-images/b.yaml": GOOD_DEF}, [
        "base-images/b.yaml: name: duplicate image family 'a' (also defined in base-images/a.yaml)"]),
    ("duplicate-yaml-key", {F: defn(f'  "1":\n    parent: {UP}\n  "1":\n    parent: {UP}\n')}, [
        f"{F}: versions.1: line 7: duplicate key (first at line 5); YAML would silently keep the last one"]),
    ("undefined-template-variable", {F: one().replace("variables: {user: app}\n", "")}, [
        f"{F}: versions.1.variables: template 't' uses undefined variable 'user'"]),
    ("undefined-variable-per-variant", {"templates/v/Dockerfile.j2": "FROM {{ parent }}\nRUN {{ extra }}\n",
                                        F: "name: a\ntemplate: v\nversions:\n  '1':\n    parent: " + UP +
                                        "\n    variants:\n      slim: {}\n      full: {variables: {extra: x}}\n"}, [
        f"{F}: versions.1.variables: template 'v' uses undefined variable 'extra'",
        f"{F}: versions.1.variants.slim.variables: template 'v' uses undefined variable 'extra'"]),
    ("typo-in-variant-variable", {F: "name: a\ntemplate: t\nvariables: {user: app}\nversions:\n  '1':\n    parent: "
                                  + UP + "\n    variants:\n      slim: {variables: {usr: b}}\n"}, [
        f"{F}: versions.1.variants.slim.variables.usr: not used by template 't' (did you mean 'user'?)"]),
    ("unused-version-variable", {F: one(extra="    variables: {colour: red}\n")}, [
        f"{F}: versions.1.variables.colour: not used by template 't'"]),
    ("int-value", {F: var("5")}, [
        f"{F}: variables.user: must be a string (or a list of strings), got int 5; quote it in YAML"]),
    ("bool-value", {F: var("yes")}, [
        f"{F}: variables.user: must be a string (or a list of strings), got boolean true; quote it in YAML"]),
    ("null-value", {F: var("null")}, [
        f"{F}: variables.user: must be a string (or a list of strings), got null; quote it in YAML"]),
    ("mapping-value", {F: var("{a: b}")}, [
        f"{F}: variables.user: must be a string (or a list of strings), got a mapping; quote it in YAML"]),
    ("list-with-int", {F: var("[a, 3]")}, [f"{F}: variables.user: list items must be strings, got int 3"]),
    ("int-name", {F: one().replace("name: a", "name: 5")}, [f"{F}: name: must be a string, got int 5"]),
    ("int-parent", {F: one("12")}, [f"{F}: versions.1.parent: must be a string, got int 12"]),
    ("tags-not-a-list", {F: one(extra="    tags: latest\n")}, [f"{F}: versions.1.tags: must be a list, got 'latest'"]),
    ("newline-injection", {F: var('"app\\nRUN curl x | sh"')}, [
        f"{F}: variables.user: value 'app\\nRUN curl x | sh' contains a newline, which would inject an "
        f"instruction into the recipe"]),
    ("semicolon-injection", {F: var('"app; rm -rf /"')}, [
        f"{F}: variables.user: value 'app; rm -rf /' contains ';', which a recipe would read as syntax; {SAFE}"]),
    ("dollar-injection", {F: var('"$(id)"')}, [
        f"{F}: variables.user: value '$(id)' contains '$', which a recipe would read as syntax; {SAFE}"]),
    ("backtick-injection", {F: var('"`id`"')}, [
        f"{F}: variables.user: value '`id`' contains '`', which a recipe would read as syntax; {SAFE}"]),
    ("and-and-injection", {F: var('"app && id"')}, [
        f"{F}: variables.user: value 'app && id' contains '&', which a recipe would read as syntax; {SAFE}"]),
    ("injection-in-version-variables", {F: one(extra='    variables: {user: "a|b"}\n')}, [
        f"{F}: versions.1.variables.user: value 'a|b' contains '|', which a recipe would read as syntax; {SAFE}"]),
    ("injection-in-list-item", {F: var('[ok, "x\\ty"]')}, [
        f"{F}: variables.user: value 'x\\ty' contains '\\t', which a recipe would read as syntax; {SAFE}"]),
    ("not-pep440", {F: defn(f'  "bookworm":\n    parent: {UP}\n')}, [
        f"{F}: versions.bookworm: 'bookworm' is not a PEP 440 version (e.g. 12, 3.11, 1.25.0)"]),
    ("unquoted-float-version", {F: defn(f'  3.10:\n    parent: {UP}\n')}, [
        f'{F}: versions.3.10: keys must be strings; YAML reads 3.10 as the number 3.1; quote it: "3.10"']),
    ("unquoted-int-version", {F: defn(f'  12:\n    parent: {UP}\n')}, [
        f'{F}: versions.12: keys must be strings; YAML reads 12 as the number 12; quote it: "12"']),
    ("invalid-variant-name", {F: one(extra="    variants:\n      Slim: {}\n")}, [
        f"{F}: versions.1.variants.Slim: variant names are lowercase letters and digits, starting with a letter"]),
    ("invalid-tag", {F: one(extra='    tags: ["-bad"]\n')}, [f"{F}: versions.1.tags: '-bad' is not a valid image tag"]),
    ("pep440-local-version", {F: defn(f'  "1.22+local":\n    parent: {UP}\n')}, [
        f"{F}: versions.1.22+local: '1.22+local' contains '+', which a Docker tag cannot hold (letters, digits, '_', "
        f"'.', '-'; a PEP 440 local version like 1.22+local is not a valid tag)"]),
    ("version-longer-than-a-tag", {F: defn(f'  "1.{"0" * 130}":\n    parent: {UP}\n')}, [
        f"{F}: versions.1.{'0' * 130}: '1.{'0' * 130}' is longer than Docker's 128 characters for a tag"]),
    ("variant-tag-longer-than-a-tag", {F: defn(f'  "1.{"0" * 100}":\n    parent: {UP}\n    variants:\n'
                                            f'      {"v" * 30}: {{}}\n')}, [
        f"{F}: versions.1.{'0' * 100}.variants.{'v' * 30}: image tag '1.{'0' * 100}-{'v' * 30}' is longer than "
        f"Docker's 128 characters"]),
    ("build-tag-longer-than-a-tag", {F: defn(f'  "1.{"0" * 118}":\n    parent: {UP}\n')}, [
        f"{F}: versions.1.{'0' * 118}: its build tags (tags.build '{{version}}-{{yyyymmdd}}.{{n}}') are 131 characters, "
        f"longer than Docker's 128 for a tag"]),
    ("invalid-variant-tag", {F: one(extra='    variants:\n      slim: {tags: ["a+b"]}\n')}, [
        f"{F}: versions.1.variants.slim.tags: 'a+b' is not a valid image tag"]),
    ("variant-and-version-same-ref", {F: defn(f'  "1":\n    parent: {UP}\n    variants: {{rc1: {{}}}}\n'
                                              f'  "1-rc1":\n    parent: {UP}\n')}, [
        f"{F}: versions.1-rc1: image a:1-rc1 is also defined by versions.1.variants.rc1; rename one"]),
    ("same-pep440-version", {F: defn(f'  "1.22":\n    parent: {UP}\n  "1.22.0":\n    parent: {UP}\n')}, [
        f"{F}: versions.1.22.0: '1.22.0' is the same PEP 440 version as '1.22' (versions.1.22); keep one"]),
    ("same-tag-twice", {F: defn(f'  "1":\n    parent: {UP}\n    tags: [latest]\n'
                                f'  "2":\n    parent: {UP}\n    tags: [latest]\n')}, [
        f"{F}: versions.2.tags: tag 'latest' is also a tag of a:1 (versions.1.tags); two images cannot share a tag"]),
    ("same-tag-twice-through-variants", {F: defn(
        f'  "1":\n    parent: {UP}\n    variants: {{extras: {{tags: [latest]}}}}\n'
        f'  "2":\n    parent: {UP}\n    tags: [latest]\n    variants: {{extras: {{}}}}\n')}, [
        f"{F}: versions.2.tags: tag 'latest' (pushed as 'latest-extras' for a:2-extras) is also a tag of a:1-extras "
        f"(versions.1.variants.extras.tags); two images cannot share a tag"]),
    ("tag-is-another-version", {F: defn(f'  "1.23":\n    parent: {UP}\n'
                                        f'  "1.24":\n    parent: {UP}\n    tags: ["1.23"]\n')}, [
        f"{F}: versions.1.24.tags: tag '1.23' is also the version tag of a:1.23 (versions.1.23); two images cannot "
        f"share a tag"]),
    ("tag-is-a-build-tag", {F: defn(f'  "1.22":\n    parent: {UP}\n'
                                    f'  "1.24":\n    parent: {UP}\n    tags: ["1.22-20261127.1", "9-20260101.3"]\n')}, [
        f"{F}: versions.1.24.tags: tag '1.22-20261127.1' looks like a build tag of a:1.22 (tags.build "
        f"'{{version}}-{{yyyymmdd}}.{{n}}'); build tags are immutable and only bakery writes them",
        f"{F}: versions.1.24.tags: tag '9-20260101.3' looks like a build tag (tags.build "
        f"'{{version}}-{{yyyymmdd}}.{{n}}'); build tags are immutable and only bakery writes them"]),
    ("reserved-variable", {F: var('app, version: "2"')}, [
        f"{F}: variables.version: 'version' is reserved (bakery sets it)"]),
    ("invalid-variable-name", {F: var('app, my-var: "2"')}, [
        f"{F}: variables.my-var: 'my-var' is not a valid variable name (letters, digits, '_')"]),
    ("invalid-image-name", {F: one().replace("name: a", "name: My_Image")}, [
        f"{F}: name: 'My_Image' is not a valid image name (lowercase letters, digits, '.', '_', '-'; a separator only between two letters or digits, and never '..')"]),
    ("empty-file", {F: ""}, [f"{F}: (top level): file is empty"]),
    ("comments-only", {F: "# nothing yet\n"}, [f"{F}: (top level): file is empty"]),
    ("yaml-syntax-error", {F: "name: a\ntemplate: t\nversions:\n  '1':\n    parent: [x\n"}, [
        f"{F}: line 6: invalid YAML: did not find expected ',' or ']'"]),
    ("yaml-bad-indent", {F: "name: a\n  template: t\n"}, [
        f"{F}: line 2: invalid YAML: mapping values are not allowed in this context"]),
    ("top-level-list", {F: "- a\n- b\n"}, [f"{F}: (top level): must be a mapping with name, template and versions"]),
    ("every-problem-at-once", {F: one("nope:1").replace("{user: app}", "{user: 5}"),
                               "base-images/b.yaml": family("b", "docker.io/library/debian")}, [
        f"{F}: variables.user: must be a string (or a list of strings), got int 5; quote it in YAML",
        f"{F}: versions.1.parent: unknown parent 'nope:1': no image family 'nope' in the definitions; an upstream "
        f"image needs its registry, e.g. docker.io/library/nope:1",
        "base-images/b.yaml: versions.1.parent: 'docker.io/library/debian' names no tag or digest; pin it "
        "(e.g. docker.io/library/debian:bookworm-slim)"]),
]


@pytest.mark.parametrize(("files", "expected"), [pytest.param(f, e, id=i) for i, f, e in CASES])
def test_invalid_definition(make_project, bakery, files: dict[str, str], expected: list[str]) -> None:
    """The same lines every time: the second and third commands read the valid files' kept outcomes."""
    project = make_project(files)
    for command in (["list"], ["render"], ["list"]):
        result = bakery(*command, cwd=project)
        assert "Traceback" not in result.err + result.out
        assert result.errors == [f"error: {line}" for line in expected], result.err
        assert result.code == 2


def test_valid_minimal_project_lists(make_project, bakery) -> None:
    project = make_project({F: GOOD_DEF})
    result = bakery("list", "--format", "json", cwd=project)
    assert result.code == 0, result.err
    assert '"ref": "a:1"' in result.out


def test_missing_definitions_dir(make_project, bakery) -> None:
    project = make_project({}, config="definitions: defs\n")
    result = bakery("list", cwd=project)
    assert result.errors == ["error: defs: definitions directory not found (set `definitions:` in bakery.yaml)"]
    assert result.code == 2


def test_template_syntax_error_names_template_and_line(make_project, bakery) -> None:
    project = make_project({F: GOOD_DEF})
    (project / "templates/t/Dockerfile.j2").write_text("FROM {{ parent }}\nRUN {% if %}\n")
    result = bakery("render", cwd=project)
    assert "Traceback" not in result.err
    assert result.code == 2
    assert result.errors and result.errors[0].startswith("error: templates/t/Dockerfile.j2: line 2: "), result.err


@pytest.mark.parametrize(("line", "expected"), [
    pytest.param('{% include "x.j2" %}', "templates/t/Dockerfile.j2: line 2: template 'x.j2' not found under "
                 "templates/ (rendering a:1)", id="include-not-found"),
    pytest.param("RUN echo {{ 1/0 }}", "templates/t/Dockerfile.j2: line 2: ZeroDivisionError: division by zero "
                 "(rendering a:1)", id="zero-division"),
    pytest.param('{% include "bad.j2" %}', "templates/t/Dockerfile.j2: line 2: the included template templates/bad.j2: "
                 "line 2: not valid UTF-8 (byte 0xff at column 3) (rendering a:1)", id="include-invalid-utf8"),
])
def test_template_runtime_errors_are_bad_input(make_project, bakery, line: str, expected: str) -> None:
    """Whatever a template raises while rendering is a problem of that template: its file and line, exit 2."""
    project = make_project({F: GOOD_DEF})
    (project / "templates/bad.j2").write_bytes(b"ok\nRU\xff\n")
    (project / "templates/t/Dockerfile.j2").write_text("FROM {{ parent }}\n" + line + "\nRUN echo {{ user }}\n")
    result = bakery("render", cwd=project)
    assert "Traceback" not in result.err and "internal error" not in result.err
    assert result.errors == [f"error: {expected}"], result.err
    assert result.code == 2


@pytest.mark.parametrize(("path", "expected"), [
    pytest.param("templates/t/Dockerfile.j2", "templates/t/Dockerfile.j2: line 2: not valid UTF-8 (byte 0xe9 at "
                 "column 6)", id="template"),
    pytest.param(F, f"{F}: line 2: not valid UTF-8 (byte 0xe9 at column 6)", id="definition"),
    pytest.param("bakery.yaml", "bakery.yaml: line 2: not valid UTF-8 (byte 0xe9 at column 6)", id="config"),
])
def test_invalid_utf8_is_bad_input(make_project, bakery, path: str, expected: str) -> None:
    project = make_project({F: GOOD_DEF})
    file = project / path
    lines = file.read_bytes().split(b"\n")
    file.write_bytes(b"\n".join([lines[0], b"# caf\xe9 au lait", *lines[1:]]))
    for command in ("list", "render"):
        result = bakery(command, cwd=project)
        assert "Traceback" not in result.err and "internal error" not in result.err
        assert result.errors == [f"error: {expected}"], result.err
        assert result.code == 2


def test_strict_undefined_at_render(make_project, bakery) -> None:
    """An attribute of a variable is not found by the undeclared-variable scan; StrictUndefined still refuses it."""
    project = make_project({F: GOOD_DEF})
    (project / "templates/t/Dockerfile.j2").write_text("FROM {{ parent }}\nRUN echo {{ user.home }}\n")
    result = bakery("render", cwd=project)
    assert result.code == 2
    assert result.errors == ["error: base-images/a.yaml: versions.1: template t/Dockerfile.j2: "
                             "'str object' has no attribute 'home'"], result.err


def test_template_variable_cache_follows_the_template(make_project, bakery) -> None:
    """The undeclared-variable scan is cached by template content: an edit is seen, a broken cache is ignored."""
    project = make_project({F: GOOD_DEF})
    assert bakery("list", cwd=project).code == 0
    cache = project / ".bakery/cache/template-vars.json"
    assert "user" in cache.read_text()

    (project / "templates/t/Dockerfile.j2").write_text("FROM {{ parent }}\nRUN echo {{ user }} {{ shell }}\n")
    result = bakery("list", cwd=project)
    assert result.errors == [f"error: {F}: versions.1.variables: template 't' uses undefined variable 'shell'"]
    assert result.code == 2

    cache.write_text("{not json")
    assert bakery("list", cwd=project).errors == result.errors
    (project / "templates/t/Dockerfile.j2").write_text("FROM {{ parent }}\nRUN {% if %}\n")
    assert bakery("list", cwd=project).code == 2  # a syntax error is never served from the cache
    assert bakery("list", cwd=project).code == 2


# ------------------------------------------------------------------------------------------------------------
# The kept outcome of a definition file (bakery.definitions._Outcomes): a file loaded before is not parsed or
# validated again, and the fleet is the same as when every file is checked.

def _generated(seed: int) -> dict[str, str]:
    """A fleet of a few families: versions, variants (one empty), tags, variables, bakery and upstream parents,
    policies with ignore entries."""
    import random

    rnd = random.Random(seed)
    files: dict[str, str] = {}
    names = [f"f{seed}x{i}" for i in range(rnd.randint(3, 7))]
    for i, name in enumerate(names):
        lines = [f"name: {name}", "template: t", f"description: family {i}", f"variables: {{user: u{i}}}"]
        if rnd.random() < 0.5:
            until = "\n      until: 2030-01-01" if rnd.random() < 0.3 else ""
            lines.append(f"policy:\n  severity: {rnd.choice(['HIGH', 'critical', 'LOW'])}\n  ignore:\n"
                         f"    - id: CVE-2024-{i}\n      reason: not reachable{until}")
        lines.append("versions:")
        for v in range(1, rnd.randint(2, 4)):
            parent = UP if i == 0 or rnd.random() < 0.3 else f"{names[rnd.randrange(i)]}:1"
            lines.append(f'  "{v}.{seed}":' if v > 1 else '  "1":')
            lines.append(f"    parent: {parent}")
            if rnd.random() < 0.5:
                lines.append(f"    tags: [t{v}]")
            if rnd.random() < 0.5:
                lines.append(f"    variables: {{user: v{v}}}")
            if rnd.random() < 0.5:
                lines.append("    variants:\n      slim: {variables: {user: s}, tags: [small" + str(v) + "]}"
                             "\n      full: {description: everything}\n      bare:")
        files[f"base-images/{name}.yaml"] = "\n".join(lines) + "\n"
    return files


@pytest.mark.parametrize("seed", range(8))
def test_a_kept_outcome_gives_the_same_fleet_as_checking_every_file(make_project, seed: int,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from bakery import defschema
    from bakery.config import load_project
    from bakery.definitions import load_fleet

    root = make_project(_generated(seed))
    project = load_project(root / "bakery.yaml", cwd=root, environ={})
    checked: list[str] = []
    real = defschema.check
    monkeypatch.setattr(defschema, "check", lambda raw, display: checked.append(display) or real(raw, display))
    full = load_fleet(project)  # every file checked (nothing kept yet)
    files = sorted(f"base-images/{p.name}" for p in (root / "base-images").iterdir())
    assert checked == files
    checked.clear()
    fast = load_fleet(project)  # the kept outcomes
    assert checked == []
    assert fast.specs == full.specs and list(fast.specs) == list(full.specs) and fast.families == full.families
    assert {k: s.policy for k, s in fast.specs.items()} == {k: s.policy for k, s in full.specs.items()}
    # the definition's own ignore entries, validated (a scan applies them without pydantic): dates stay dates
    assert {k: s.ignore for k, s in fast.specs.items()} == {k: s.ignore for k, s in full.specs.items()}
    assert all(len(s.ignore or ()) == len(s.policy.get("ignore", [])) for s in fast.specs.values() if s.policy)
    assert all(isinstance(e.until, dt.date) for s in fast.specs.values() for e in s.ignore or () if e.until)


def test_a_changed_definition_is_checked_again_and_its_errors_are_never_kept(make_project, bakery) -> None:
    from bakery import defschema

    project = make_project({F: GOOD_DEF, "base-images/b.yaml": family("b", "a:1")})
    first = bakery("list", "--format", "json", cwd=project)
    assert first.code == 0, first.err
    assert bakery("list", "--format", "json", cwd=project).out == first.out
    calls: list[str] = []
    real = defschema.check
    defschema.check = lambda raw, display: calls.append(display) or real(raw, display)  # a spy
    try:
        assert bakery("list", cwd=project).code == 0 and calls == []  # both kept
        (project / F).write_text(GOOD_DEF.replace("{user: app}", "{user: other}"))
        assert bakery("list", "--format", "json", cwd=project).code == 0 and calls == [F]  # one byte: checked
        (project / F).write_text(GOOD_DEF.replace("template: t", "templat: t"))
        for _ in range(2):  # an invalid file is checked every time, its errors are the check's own; what
            # depends on other files (b's parent) is checked every time too, b's kept outcome or not
            result = bakery("list", cwd=project)
            assert result.code == 2 and result.errors == [
                f"error: {F}: template: required key is missing",
                f"error: {F}: templat: unknown key (did you mean 'template'?)",
                "error: base-images/b.yaml: versions.1.parent: unknown parent 'a:1': no image family 'a' in the "
                "definitions; an upstream image needs its registry, e.g. docker.io/library/a:1"]
        assert calls == [F, F, F]
        (project / F).write_text(GOOD_DEF)  # back to the first bytes (only the last load's outcomes are kept)
        assert bakery("list", "--format", "json", cwd=project).out == first.out and calls == [F, F, F, F]
        assert bakery("list", "--format", "json", cwd=project).out == first.out and calls == [F, F, F, F]
    finally:
        defschema.check = real
