"""The repository is untrusted input: each test here is an attack from issue 11 run through the real CLI
(in-process), asserting that it is refused with exit 2 and a message naming it, and that it had no effect."""

from __future__ import annotations

import os
import resource
import socket
from pathlib import Path

import pytest

GOOD_DEF = (Path(__file__).resolve().parents[1] / "fixtures" / "minimal-definition.yaml").read_text()
F = "base-images/a.yaml"


def test_template_cannot_run_commands(make_project, bakery, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f"{{{{ cycler.__init__.__globals__.os.popen('touch {marker}').read() }}}}"
    project = make_project({F: GOOD_DEF, "templates/t/Dockerfile.j2": f"FROM {{{{ parent }}}}\nRUN {payload}\n"
                                                                      "RUN echo {{ user }}\n"})
    result = bakery("render", "--out", "out", cwd=project)
    assert result.code == 2, result.err
    assert not marker.exists()
    assert result.errors == ["error: templates/t/Dockerfile.j2: line 2: template error: access to attribute "
                             "'__init__' of 'type' object is unsafe. (rendering a:1)"]


@pytest.mark.parametrize("expr", ["''.__class__.__mro__[1].__subclasses__()", "self._TemplateReference__context",
                                  "range.__globals__", "lipsum.__globals__['os'].system('id')"])
def test_template_sandbox_refuses_introspection(make_project, bakery, expr: str) -> None:
    project = make_project({F: GOOD_DEF, "templates/t/Dockerfile.j2": f"FROM x\nRUN {{{{ {expr} }}}}\n{{{{ user }}}}"})
    result = bakery("render", "--out", "out", cwd=project)
    assert result.code == 2, result.err
    assert "Traceback" not in result.err and "internal error" not in result.err


@pytest.mark.parametrize(("body", "fragment"), [
    ("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}", "took longer than"),
    ("{% set l = range(100000)|list %}{% for a in l %}{% for b in l %}{% endfor %}{% endfor %}", "took longer than"),
    ("{{ 'x' * 1024**3 }}", "above the limit"),
    ("{{ 'x' * 1000000 }}{{ 'x' * 1000000 }}{{ 'x' * 1000000 }}{{ 'x' * 1000000 }}{{ 'x' * 1000000 }}"
     "{{ 'x' * 1000000 }}{{ 'x' * 1000000 }}{{ 'x' * 1000000 }}{{ 'x' * 1000000 }}", "output is larger"),
    ("{{ 10 ** 100000000 }}", "exponent"),
    ("{{ '%0999999999d' % 1 }}", "width"),
    ("{{ 'x'.center(1000000000) }}", "above the limit"),
    ("{{ 'x'|center(1000000000) }}", "width"),
    ("{{ '{:999999999}'.format(1) }}", "format width"),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "rendering a:1"),
])
def test_template_time_and_size_are_limited(make_project, bakery, body: str, fragment: str) -> None:
    from bakery import render

    project = make_project({F: GOOD_DEF, "templates/t/Dockerfile.j2": "FROM x\n" + body + "{{ user }}\n"})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    old = render.RENDER_SECONDS
    render.RENDER_SECONDS = 1.0  # the production limit is 10 s; the test only needs the limit to trip
    try:
        result = bakery("render", "--out", "out", cwd=project)
    finally:
        render.RENDER_SECONDS = old
    assert result.code == 2, result.err
    assert len(result.errors) == 1 and fragment in result.errors[0], result.err
    assert result.errors[0].startswith("error: templates/t/Dockerfile.j2"), result.err
    assert "(rendering a:1" in result.errors[0]
    # no gigabyte allocation happened (maxrss is in KiB on Linux)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024


def _files(project: Path) -> Path:
    files = project / "templates/t/files"
    files.mkdir(parents=True, exist_ok=True)
    (files / "ok.txt").write_text("fine\n")
    return files


def test_symlink_in_files_to_a_host_file_is_refused(make_project, bakery, tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret\n")
    project = make_project({F: GOOD_DEF})
    (_files(project) / "shadow").symlink_to(secret)
    result = bakery("render", "--out", "out", cwd=project)
    assert result.code == 2
    assert result.errors == [f"error: templates/t/files/shadow: a symlink to '{secret}', outside the repository; "
                             f"bakery reads only files inside the repository"]
    assert not (project / "out").exists()
    assert "secret" not in result.out + result.err.replace(str(secret), "")


def test_files_dir_as_symlink_outside_is_refused(make_project, bakery, tmp_path: Path) -> None:
    outside = tmp_path / "apt"
    outside.mkdir()
    (outside / "sources.list").write_text("deb x\n")
    project = make_project({F: GOOD_DEF})
    (project / "templates/t/files").symlink_to(outside, target_is_directory=True)
    result = bakery("list", cwd=project)
    assert result.code == 2
    assert result.errors == [f"error: templates/t/files: a symlink to '{outside}', outside the repository; "
                             f"bakery reads only files inside the repository"]


@pytest.mark.parametrize("kind", ["fifo", "socket", "dangling", "dir-symlink"])
def test_special_files_in_files_are_named_not_skipped(make_project, bakery, kind: str, tmp_path: Path) -> None:
    project = make_project({F: GOOD_DEF})
    path = _files(project) / "thing"
    if kind == "fifo":
        os.mkfifo(path)
        want = "templates/t/files/thing: is a FIFO (named pipe); a build context holds regular files and " \
               "directories only"
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
        want = "templates/t/files/thing: is a socket; a build context holds regular files and directories only"
    elif kind == "dangling":
        path.symlink_to(project / "nowhere")
        want = f"templates/t/files/thing: a dangling symlink (to '{project / 'nowhere'}'); refused"
    else:
        (project / "templates/t/sub").mkdir()
        path.symlink_to(project / "templates/t/sub", target_is_directory=True)
        want = "templates/t/files/thing: a symlink to a directory; bakery does not follow directory symlinks in a " \
               "build context (make it a real directory)"
    result = bakery("list", cwd=project)
    assert result.code == 2, result.err
    assert result.errors == [f"error: {want}"]


def test_symlink_inside_the_repository_is_taken_as_its_file(make_project, bakery) -> None:
    project = make_project({F: GOOD_DEF, "shared/motd": "hello\n"})
    (_files(project) / "motd").symlink_to(project / "shared/motd")
    result = bakery("render", "--out", "out", cwd=project)
    assert result.code == 0, result.err
    copied = project / "out/a/1/files/motd"
    assert copied.read_text() == "hello\n" and not copied.is_symlink()


@pytest.mark.parametrize(("template", "fragment"), [
    ("../evil", "must be a directory name under templates/"),
    ("/etc", "must be a directory name under templates/"),
    ("t/../../x", "must be a directory name under templates/"),
])
def test_template_path_cannot_leave_templates(make_project, bakery, template: str, fragment: str) -> None:
    project = make_project({F: GOOD_DEF.replace("template: t", f"template: {template}")})
    result = bakery("list", cwd=project)
    assert result.code == 2
    assert len(result.errors) == 1 and fragment in result.errors[0]


def test_template_dir_symlinked_outside_is_refused(make_project, bakery, tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "Dockerfile.j2").write_text("FROM x\n")
    project = make_project({F: GOOD_DEF.replace("template: t", "template: e")})
    (project / "templates/e").symlink_to(evil, target_is_directory=True)
    result = bakery("list", cwd=project)
    assert result.code == 2
    assert result.errors == [f"error: base-images/a.yaml: template: templates/e: a symlink to '{evil}', outside the "
                             f"repository; bakery reads only files inside the repository"]


def test_include_symlinked_outside_is_refused(make_project, bakery, tmp_path: Path) -> None:
    (tmp_path / "secret.j2").write_text("TOPSECRET\n")
    project = make_project({F: GOOD_DEF, "templates/t/Dockerfile.j2": "FROM x\n{% include 'inc.j2' %}{{ user }}\n"})
    (project / "templates/inc.j2").symlink_to(tmp_path / "secret.j2")
    result = bakery("render", "--out", "out", cwd=project)
    assert result.code == 2
    assert "TOPSECRET" not in result.err + result.out
    assert "templates/inc.j2: a symlink to" in result.err and "outside the repository" in result.err


def test_definition_symlinked_to_a_host_file_is_not_echoed(make_project, bakery, tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$abcdefgh:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n")
    project = make_project({F: GOOD_DEF})
    (project / "base-images/shadow.yaml").symlink_to(secret)
    result = bakery("list", cwd=project)
    assert result.code == 2
    assert "abcdefgh" not in result.err and "daemon" not in result.err
    assert result.errors == [f"error: base-images/shadow.yaml: a symlink to '{secret}', outside the repository; "
                             f"bakery reads only files inside the repository"]


def test_config_that_is_not_yaml_is_not_echoed(make_project, bakery, tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("".join(f"user{i}: x{i}\n" for i in range(50)))
    project = make_project({F: GOOD_DEF})
    result = bakery("--config", str(secret), "config", cwd=project)
    assert result.code == 2
    assert "user30" not in result.err
    assert len(result.errors) <= 11


@pytest.mark.parametrize("kind", ["dir", "fifo", "dangling"])
def test_yaml_named_non_files_in_definitions_are_named(make_project, bakery, kind: str) -> None:
    project = make_project({F: GOOD_DEF})
    path = project / "base-images/odd.yaml"
    if kind == "dir":
        path.mkdir()
        want = "base-images/odd.yaml: is a directory, not a regular file; refused"
    elif kind == "fifo":
        os.mkfifo(path)
        want = "base-images/odd.yaml: is a FIFO (named pipe), not a regular file; refused"
    else:
        path.symlink_to(project / "gone.yaml")
        want = f"base-images/odd.yaml: a dangling symlink (to '{project / 'gone.yaml'}'); refused"
    result = bakery("list", cwd=project)
    assert result.code == 2
    assert result.errors == [f"error: {want}"]


def test_render_out_never_writes_or_deletes_through_a_symlinked_subdirectory(example: Path, bakery,
                                                                             tmp_path: Path) -> None:
    victim_dir = tmp_path / "victim"
    (victim_dir / "12").mkdir(parents=True)
    victim = victim_dir / "12" / "important.txt"
    victim.write_text("keep\n")
    (example / "out").mkdir()
    (example / "out/base").symlink_to(victim_dir, target_is_directory=True)
    result = bakery("render", "--out", "out", "base", cwd=example)
    assert result.code == 0, result.err
    assert victim.read_text() == "keep\n"
    assert sorted(p.name for p in (victim_dir / "12").iterdir()) == ["important.txt"]
    assert not (example / "out/base").is_symlink()
    assert (example / "out/base/12/Dockerfile").is_file()


def test_render_out_keeps_what_it_did_not_write(example: Path, bakery) -> None:
    (example / "out").mkdir()
    (example / "out/NOTES.md").write_text("mine\n")
    assert bakery("render", "--out", "out", "base", cwd=example).code == 0
    assert (example / "out/NOTES.md").read_text() == "mine\n"
    assert not [p for p in (example / "out").iterdir() if p.name.startswith(".bakery")]


@pytest.mark.parametrize(("out", "fragment"), [
    ("", "--out: an empty path"),
    ("/proc/bakery-out", "cannot write"),
])
def test_render_out_refuses_bad_destination(example: Path, bakery, out: str, fragment: str) -> None:
    result = bakery("render", "--out", out, "base", cwd=example)
    assert result.code == 2, result.err
    assert len(result.errors) == 1 and fragment in result.errors[0], result.err
    assert not (example / "base").exists()


def test_duplicate_keys_in_bakery_yaml_are_refused(make_project, bakery) -> None:
    config = ("environments:\n  dev:\n    registry: 127.0.0.1:5001/ok\n  prod:\n    registry: 127.0.0.1:5003/p\n"
              "  dev:\n    registry: evil.example.com/x\n")
    project = make_project({F: GOOD_DEF}, config=config)
    result = bakery("config", cwd=project)
    assert result.code == 2
    assert result.errors == ["error: bakery.yaml: environments.dev: line 6: duplicate key (first at line 2); YAML "
                             "would silently keep the last one"]


LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))


@pytest.mark.parametrize("where", ["variables", "policy-ignore", "config"])
def test_billion_laughs_is_refused_quickly_and_briefly(make_project, bakery, where: str) -> None:
    body = "\n".join("  " + line for line in LAUGHS.splitlines())
    if where == "variables":
        files = {F: GOOD_DEF.replace("variables: {user: app}", "variables:\n" + body)}
        config = "{}\n"
    elif where == "policy-ignore":
        files = {F: GOOD_DEF + "policy:\n  ignore:\n" + body.replace("  a:", "  - a:").replace("\n  ", "\n    ")}
        config = "{}\n"
    else:
        files, config = {F: GOOD_DEF}, "x:\n" + body + "\n"
    project = make_project(files, config=config)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = bakery("list", cwd=project)
    assert result.code == 2
    assert len(result.err) < 1000
    assert "more than 100000 values after expanding aliases" in result.err
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 256 * 1024


@pytest.mark.parametrize(("name", "shown"), [
    ("evil\nerror: all good.yaml", "evil\\nerror: all good.yaml"),
    ("evil\x1b[2K.yaml", "evil\\x1b[2K.yaml"),
])
def test_newline_or_escape_in_a_file_name_cannot_forge_a_line(make_project, bakery, name: str, shown: str) -> None:
    project = make_project({F: GOOD_DEF})
    (project / "base-images" / name).write_text("name: [\n")
    result = bakery("list", cwd=project)
    assert result.code == 2
    assert all(line.startswith("error: base-images/evil") for line in result.err.splitlines()), result.err
    assert "\x1b" not in result.err and shown in result.err


def test_newline_in_a_key_cannot_forge_a_line(make_project, bakery) -> None:
    project = make_project({F: GOOD_DEF + '"x\\nerror: forged": 1\n'})
    result = bakery("list", cwd=project)
    assert result.code == 2
    assert result.errors == ["error: base-images/a.yaml: x\\nerror: forged: unknown key (allowed: description, "
                             "name, packer, policy, template, variables, versions)"]


@pytest.mark.parametrize("value", ["nginx-light -o APT::Get::AllowUnauthenticated=true", "-oDebug=1",
                                   "--allow-unauthenticated"])
def test_package_values_that_act_as_options_are_refused(make_project, bakery, value: str) -> None:
    project = make_project({F: GOOD_DEF.replace("{user: app}", f"{{user: app, packages: ['{value}']}}")})
    result = bakery("list", cwd=project)
    assert result.code == 2
    assert len(result.errors) >= 1 and "which would be read as an option by the command it lands in" in result.err, result.err


def test_render_check_neither_follows_a_symlinked_family_nor_reads_a_fifo(example: Path, bakery,
                                                                          tmp_path: Path) -> None:
    assert bakery("render", "--out", "r", cwd=example).code == 0
    outside = tmp_path / "outside-python"
    (outside / "3.11").mkdir(parents=True)
    (outside / "3.11" / "Dockerfile").write_text("SECRET-CONTENT\n")
    import shutil

    shutil.rmtree(example / "r/python")
    (example / "r/python").symlink_to(outside, target_is_directory=True)
    os.mkfifo(example / "r/base/12/pipe")
    result = bakery("render", "--check", "r", cwd=example)
    assert result.code == 1
    assert "SECRET-CONTENT" not in result.out
    assert "r/python: a symlink (`render --out` would replace it)" in result.out
    assert "r/base/12/pipe: not a regular file (`render --out` would remove it)" in result.out


def test_every_problem_of_bakery_yaml_in_one_run(make_project, bakery) -> None:
    config = ("environments:\n  Dev: {registry: 'a.io/x'}\n  'pro d': {registry: 'b.io/x'}\n"
              "mirrors: {'a b': x.io, 'c/d': y.io, docker.io: '127.0.0.1:5000/../..'}\n"
              "scanner: {timeout: -1}\nbuild: {timeout: .nan}\ntags: {build: '{version}', aliases: ['{foo}', '']}\n")
    project = make_project({F: GOOD_DEF}, config=config)
    result = bakery("config", cwd=project)
    assert result.code == 2
    for fragment in ["environment name 'Dev'", "environment name 'pro d'", "mirror key 'a b'", "mirror key 'c/d'",
                     "mirrors.docker.io: not a registry reference", "scanner.timeout: must be > 0",
                     "build.timeout", "tags.build: tag scheme '{version}' is not unique per build"]:
        assert sum(fragment in line for line in result.errors) == 1, (fragment, result.err)


def test_every_problem_of_definitions_in_one_run(make_project, bakery) -> None:
    bad = ("name: nginx-\ntemplate: ../x\npacker: {knd: docker}\npolicy: {severity: SEVERE}\n"
           "variables: {user: '-u0'}\nversions: {'1': {parent: '127.0.0.1:0/x:1', tags: ['-t']}}\n")
    project = make_project({F: GOOD_DEF, "base-images/b.yaml": bad})
    result = bakery("list", cwd=project)
    assert result.code == 2
    for fragment in ["name: 'nginx-' is not a valid image name", "template '../x' must be a directory name",
                     "packer.knd: unknown key", "policy.severity: 'SEVERE'", "has the word '-u0'",
                     "registry port 0 is out of range", "'-t' is not a valid image tag"]:
        assert sum(fragment in line for line in result.errors) == 1, (fragment, result.err)


def test_unknown_bakery_variable_is_warned_with_a_hint(make_project, bakery) -> None:
    project = make_project({F: GOOD_DEF})
    result = bakery("list", cwd=project, env={"BAKERY_DB_REPOSITRY": "x", "BAKERY_JOBS": "2"})
    assert result.code == 0
    assert result.err.splitlines() == ["warning: BAKERY_DB_REPOSITRY: unknown BAKERY_* variable, ignored (did you "
                                       "mean BAKERY_DB_REPOSITORY?)"]


def test_table_output_shows_markup_in_a_file_name_as_written(make_project, bakery) -> None:
    project = make_project({"base-images/[red]a.yaml": GOOD_DEF})
    result = bakery("list", cwd=project)
    assert result.code == 0, result.err
    assert "base-images/[red]a.yaml" in result.out


def test_a_link_swapped_in_after_the_check_is_caught_on_the_open_file(tmp_path: Path) -> None:
    """The second line of containment: what was actually opened is checked (/proc/self/fd), so a file replaced by
    a symlink between bakery.contain's check and the read is still refused."""
    from bakery.errors import InputError
    from bakery.yamlsafe import read_bytes

    repo = tmp_path / "repo"
    repo.mkdir()
    (tmp_path / "secret").write_text("TOPSECRET\n")
    (repo / "a.yaml").symlink_to(tmp_path / "secret")  # as if swapped in after the check
    with pytest.raises(InputError, match=r"^a.yaml: changed into a link out of the repository while bakery read it"):
        read_bytes(repo / "a.yaml", "a.yaml", root=repo)
    (repo / "b.yaml").write_text("name: b\n")
    assert read_bytes(repo / "b.yaml", "b.yaml", root=repo) == b"name: b\n"


def _git(root: Path, *args: str) -> None:
    import subprocess

    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args], cwd=root, check=True,
                   capture_output=True)


@pytest.mark.parametrize("planted", [".bakery/scans/sha256-ab.json", ".bakery/trivy/db/trivy.db",
                                     ".bakery/ledger.db", ".bakery/labels/sha256-cd.json"])
def test_state_committed_to_the_repository_is_refused_not_read(make_project, bakery, planted: str) -> None:
    """A pull request that force-adds bakery state (a stored scan that passes the gate, a vulnerability DB, ledger
    events, a label cache) is refused before any command reads it: exit 2 naming the file; removed from the
    index (kept on disk, ignored), the same command runs."""
    project = make_project({F: GOOD_DEF, "templates/t/Dockerfile.j2": "FROM {{ parent }}\nRUN echo {{ user }}\n",
                            ".gitignore": ".bakery/\n"})
    (project / planted).parent.mkdir(parents=True, exist_ok=True)
    (project / planted).write_text("{}")
    _git(project, "init", "-q")
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "fleet")
    assert bakery("list", cwd=project).code == 0  # ignored, not tracked: state as usual
    _git(project, "add", "-f", planted)
    _git(project, "commit", "-qm", "a forged state file")
    result = bakery("list", cwd=project)
    assert result.code == 2, result.err
    assert len(result.errors) == 1 and "'.bakery" in result.errors[0] and planted in result.errors[0], result.errors
    assert "tracked by git" in result.errors[0] and "Traceback" not in result.err
    _git(project, "rm", "-q", "-r", "--cached", ".bakery")
    assert bakery("list", cwd=project).code == 0


def test_the_state_check_asks_git_once_per_state_of_the_index(make_project, monkeypatch: pytest.MonkeyPatch) -> None:
    from bakery import statecheck, tools
    from bakery.config import load_project

    root = make_project({F: GOOD_DEF, ".gitignore": ".bakery/\n"})
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "fleet")
    project = load_project(root / "bakery.yaml", cwd=root, environ={})
    calls: list[list[str]] = []
    real = tools.run
    monkeypatch.setattr(tools, "run", lambda binary, args, **kw: calls.append(list(args)) or real(binary, args, **kw))
    assert statecheck.tracked(project) == [] and statecheck.tracked(project) == []
    assert len(calls) == 1  # the clean answer is remembered for this index
    (root / "x.txt").write_text("x")
    _git(root, "add", "x.txt")  # the index changes: asked again
    assert statecheck.tracked(project) == [] and len(calls) == 2
    # outside a git checkout nothing is asked
    plain = load_project(make_project({F: GOOD_DEF}) / "bakery.yaml", cwd=root, environ={})
    assert statecheck.tracked(plain) == [] and len(calls) == 2
