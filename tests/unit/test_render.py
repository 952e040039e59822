"""Rendering: byte-identical output, `render --check`, the parent as ARG BASE_IMAGE, mirrors, DAG order."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from bakery.config import load_project
from bakery.definitions import load_fleet
from bakery.errors import InputError
from bakery.model import ImageKey


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_render_twice_is_byte_identical(example: Path, bakery) -> None:
    first = bakery("render", "--out", "out1", cwd=example)
    second = bakery("render", "--out", "out1b", cwd=example)
    assert first.code == second.code == 0, first.err
    a, b = tree(example / "out1"), tree(example / "out1b")
    assert a and a == b
    assert "base/12/Dockerfile" in a and "python/3.11-full/Dockerfile" in a
    # stdout lists the recipe directories in a stable, sorted order
    assert first.out.replace("out1/", "") == second.out.replace("out1b/", "")
    dirs = [line for line in first.out.splitlines()]
    assert dirs == sorted(dirs, key=lambda d: (d.split("/")[1], d))


def test_render_in_two_copies_is_byte_identical(example: Path, tmp_path: Path, bakery) -> None:
    other = tmp_path / "elsewhere" / "deeper"
    shutil.copytree(example, other)
    assert bakery("render", cwd=example).code == 0
    assert bakery("render", cwd=other).code == 0
    a, b = tree(example / ".bakery/rendered"), tree(other / ".bakery/rendered")
    assert a == b and len(a) >= 6
    assert not any(str(example) in v.decode(errors="replace") for v in a.values())


def test_check_passes_on_fresh_output(example: Path, bakery) -> None:
    assert bakery("render", "--out", "recipes", cwd=example).code == 0
    result = bakery("render", "--check", "recipes", cwd=example)
    assert result.code == 0, result.out + result.err
    assert result.out == ""
    assert "match the definitions" in result.err


def test_check_fails_with_diff_after_hand_edit(example: Path, bakery) -> None:
    bakery("render", "--out", "recipes", cwd=example)
    dockerfile = example / "recipes/nginx/1.22/Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("EXPOSE 80", "EXPOSE 8080"))
    result = bakery("render", "--check", "recipes", cwd=example)
    assert result.code == 1
    assert "--- recipes/nginx/1.22/Dockerfile (on disk)\n" in result.out
    assert "+++ recipes/nginx/1.22/Dockerfile (rendered)\n" in result.out
    assert "-EXPOSE 8080\n" in result.out and "+EXPOSE 80\n" in result.out
    assert "error: recipes: recipes differ from the definitions" in result.err


def test_check_fails_on_extra_and_missing_file(example: Path, bakery) -> None:
    bakery("render", "--out", "recipes", cwd=example)
    (example / "recipes/base/12/files/hardening.sh").unlink()
    (example / "recipes/base/12/notes.txt").write_text("hand-written\n")
    result = bakery("render", "--check", "recipes", cwd=example)
    assert result.code == 1
    assert "--- /dev/null\n+++ recipes/base/12/files/hardening.sh (rendered)\n" in result.out
    assert "--- recipes/base/12/notes.txt (on disk)\n+++ /dev/null\n" in result.out
    assert "-hand-written\n" in result.out


def test_check_reports_what_render_out_would_remove(example: Path, bakery) -> None:
    """An empty directory, a symlink or an empty file in a recipe directory, and (for the whole fleet) a recipe
    of an image that is gone: `render --check` fails on each, so it agrees with `render --out`."""
    assert bakery("render", "--out", "D", cwd=example).code == 0
    (example / "D/base/12/extra").mkdir()
    (example / "D/base/12/empty").write_text("")
    (example / "D/base/12/link").symlink_to(example / "bakery.yaml")
    (example / "D/old/1.0").mkdir(parents=True)
    (example / "D/old/1.0/Dockerfile").write_text("FROM scratch\n")
    result = bakery("render", "--check", "D", cwd=example)
    assert result.code == 1
    assert result.out.splitlines() == [
        "D/base/12/extra/: an empty directory (`render --out` would remove it)",
        "D/base/12/link: a symlink (`render --out` would remove it)",
        "--- D/base/12/empty (on disk)", "+++ /dev/null",
        "--- D/old/1.0/Dockerfile (on disk)", "+++ /dev/null", "@@ -1 +0,0 @@", "-FROM scratch"]
    assert "error: D: recipes differ from the definitions" in result.err
    # naming images checks only their directories
    only_nginx = bakery("render", "--check", "D", "nginx", cwd=example)
    assert only_nginx.code == 0, only_nginx.out
    assert bakery("render", "--out", "D", cwd=example).code == 0
    assert not (example / "D/base/12/extra").exists() and not (example / "D/base/12/link").exists()
    shutil.rmtree(example / "D/old")
    assert bakery("render", "--check", "D", cwd=example).code == 0


def test_check_fails_on_missing_directory(example: Path, bakery) -> None:
    result = bakery("render", "--check", "nothing-here", "base", cwd=example)
    assert result.code == 1
    assert "+++ nothing-here/base/12/Dockerfile (rendered)" in result.out


def test_out_and_check_together_is_usage_error(example: Path, bakery) -> None:
    result = bakery("render", "--out", "a", "--check", "b", cwd=example)
    assert result.code == 2
    assert "--out and --check cannot be combined" in result.err


def test_parent_as_build_arg_and_mirror(example: Path, bakery) -> None:
    assert bakery("render", "--out", "r", cwd=example).code == 0
    base = (example / "r/base/12/Dockerfile").read_text().splitlines()
    # upstream docker.io is rewritten to the configured mirror
    assert "ARG BASE_IMAGE=127.0.0.1:5000/library/debian:bookworm-slim" in base
    assert base[base.index("ARG BASE_IMAGE=127.0.0.1:5000/library/debian:bookworm-slim") + 1] == "FROM ${BASE_IMAGE}"
    # a bakery parent is the parent's repository in the first environment
    python = (example / "r/python/3.11/Dockerfile").read_text()
    assert "ARG BASE_IMAGE=127.0.0.1:5001/bakery/base:12\n" in python
    web = (example / "r/python-web/1.0/Dockerfile").read_text()
    assert "ARG BASE_IMAGE=127.0.0.1:5001/bakery/python:3.11\n" in web
    # variant variables override the version's
    assert "python3-pip python3-venv" in (example / "r/python/3.11-full/Dockerfile").read_text()
    assert "python3-pip" not in python


def test_no_mirror_keeps_upstream(example: Path, bakery) -> None:
    config = example / "bakery.yaml"
    config.write_text(config.read_text().replace("  docker.io: 127.0.0.1:5000\n", "  quay.io: 127.0.0.1:5009\n"))
    assert bakery("render", "--out", "r", "base", cwd=example).code == 0
    assert "ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim\n" in (example / "r/base/12/Dockerfile").read_text()


def test_render_replaces_stale_files(example: Path, bakery) -> None:
    bakery("render", "--out", "r", "base", cwd=example)
    (example / "r/base/12/stale").write_text("x")
    bakery("render", "--out", "r", "base", cwd=example)
    assert not (example / "r/base/12/stale").exists()


def test_dag_levels_of_example_fleet(example: Path) -> None:
    fleet = load_fleet(load_project(cwd=example, environ={}))
    depth = {s.key: i for i, level in enumerate(fleet.levels()) for s in level}
    assert depth[ImageKey("base", "12")] == 0
    assert depth[ImageKey("python", "3.11")] == depth[ImageKey("python", "3.11", "full")] == 1
    assert depth[ImageKey("nginx", "1.22")] == 1
    assert depth[ImageKey("python-web", "1.0")] == 2
    for key, d in depth.items():
        parent = fleet.parent_key(fleet.get(key))
        if parent is not None:
            assert depth[parent] < d
    for level in fleet.levels():
        keys = [s.key for s in level]
        assert keys == sorted(keys, key=fleet.sort_key)
    assert fleet.children(ImageKey("base", "12")) == [ImageKey("nginx", "1.22"), ImageKey("python", "3.11"),
                                                       ImageKey("python", "3.11", "full")]
    assert fleet.ancestors(ImageKey("python-web", "1.0")) == [ImageKey("python", "3.11"), ImageKey("base", "12")]
    assert ImageKey("python-web", "1.0") in fleet.descendants(ImageKey("base", "12"))


def test_levels_of_a_subset_ignore_parents_outside(example: Path) -> None:
    fleet = load_fleet(load_project(cwd=example, environ={}))
    levels = fleet.levels([ImageKey("python", "3.11"), ImageKey("python-web", "1.0")])
    assert [[str(s.key) for s in level] for level in levels] == [["python:3.11"], ["python-web:1.0"]]


def test_versions_sort_numerically(make_project) -> None:
    versions = "".join(f'  "{v}":\n    parent: docker.io/library/debian:12\n' for v in ("3.9", "3.10", "3.11"))
    project = make_project({"base-images/a.yaml": f"name: a\ntemplate: t\nvariables: {{user: x}}\nversions:\n{versions}"})
    fleet = load_fleet(load_project(cwd=project, environ={}))
    assert [s.key.version for s in fleet.select(["a"])] == ["3.9", "3.10", "3.11"]


def test_select_and_resolve_ref(example: Path) -> None:
    fleet = load_fleet(load_project(cwd=example, environ={}))
    assert [str(k) for k in fleet.resolve_ref("python")] == ["python:3.11", "python:3.11-full"]
    assert [str(k) for k in fleet.resolve_ref("python:3.11")] == ["python:3.11"]
    assert [str(k) for k in fleet.resolve_ref("python:3.11-full")] == ["python:3.11-full"]
    assert [str(s.key) for s in fleet.select(["python-web", "base:12", "base"])] == ["base:12", "python-web:1.0"]
    assert len(fleet.select([])) == len(fleet.specs)
    with pytest.raises(InputError, match=r"^unknown image 'pyton' \(did you mean 'python'\?\); `bakery list` "):
        fleet.resolve_ref("pyton")
    with pytest.raises(InputError, match=r"^unknown version '3.12' of 'python' \(known: 3.11, 3.11-full\)$"):
        fleet.resolve_ref("python:3.12")


def test_unknown_ref_on_cli_exits_2(example: Path, bakery) -> None:
    result = bakery("render", "pyton", cwd=example)
    assert result.code == 2
    assert result.errors == ["error: unknown image 'pyton' (did you mean 'python'?); `bakery list` shows the fleet"]


def test_render_does_not_write_through_symlinks(example: Path, tmp_path: Path, bakery) -> None:
    bakery("render", "--out", "r", "base", cwd=example)
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    dockerfile = example / "r/base/12/Dockerfile"
    expected = dockerfile.read_bytes()
    dockerfile.unlink()
    dockerfile.symlink_to(outside)
    (example / "r/base/12/link-dir").symlink_to(tmp_path, target_is_directory=True)
    (example / "r/base/12/files/empty").mkdir()
    assert bakery("render", "--out", "r", "base", cwd=example).code == 0
    assert outside.read_text() == "keep me\n"
    assert not dockerfile.is_symlink() and dockerfile.read_bytes() == expected
    assert sorted(tree(example / "r").keys()) == ["base/12/Dockerfile", "base/12/files/hardening.sh"]
    assert not (example / "r/base/12/link-dir").exists() and not (example / "r/base/12/files/empty").exists()
    assert bakery("render", "--check", "r", "base", cwd=example).code == 0


def test_rerender_leaves_unchanged_files_alone(example: Path, bakery) -> None:
    bakery("render", "--out", "r", "base", cwd=example)
    dockerfile = example / "r/base/12/Dockerfile"
    before = dockerfile.stat().st_mtime_ns
    os.utime(dockerfile, ns=(before - 10**9, before - 10**9))
    bakery("render", "--out", "r", "base", cwd=example)
    assert dockerfile.stat().st_mtime_ns == before - 10**9
