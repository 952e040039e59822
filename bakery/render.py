"""Render definitions into recipes (Dockerfile, *.pkr.hcl, *.pkrvars.hcl) with Jinja, deterministically.

The same definitions, templates and configuration give byte-identical files on every run and machine:
no timestamps, sorted inputs, StrictUndefined. The parent is written as ``ARG BASE_IMAGE=<reference>``;
`bakery build` passes the parent pinned by digest as the build argument, so the rendered file stays the
same while the build is exact.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shutil
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import jinja2

from bakery.config import Project
from bakery.definitions import mirrored
from bakery.errors import InputError
from bakery.model import ImageSpec, Recipe


@lru_cache(maxsize=8)
def _environment(templates_dir: str) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["words"] = lambda v: " ".join(v) if isinstance(v, list) else v
    return env


def environment(project: Project) -> jinja2.Environment:
    return _environment(str(project.templates_dir))


def parent_reference(project: Project, spec: ImageSpec) -> str:
    """The symbolic parent written into recipes: the mirrored upstream, or the parent in the first registry."""
    if spec.parent.kind == "upstream":
        return mirrored(project, spec.parent.reference)
    assert spec.parent.key is not None
    env = project.config.environments[project.config.first_env]
    return f"{env.image(spec.parent.key.name)}:{spec.parent.key.tag_version}"


def context(project: Project, spec: ImageSpec) -> dict[str, object]:
    return {
        **spec.variables,
        "name": spec.key.name,
        "version": spec.key.version,
        "variant": spec.key.variant or "",
        "image": spec.key.tag_version,
        "parent": parent_reference(project, spec),
        "tags": list(spec.tags),
    }


class _TemplateFiles:
    """Per render run: each template directory's *.j2 names and context file bytes, read once."""

    def __init__(self) -> None:
        self._j2: dict[Path, list[Path]] = {}
        self._bytes: dict[Path, bytes] = {}

    def j2(self, tdir: Path) -> list[Path]:
        if tdir not in self._j2:
            self._j2[tdir] = sorted(tdir.glob("*.j2"))
        return self._j2[tdir]

    def read(self, path: Path) -> bytes:
        if path not in self._bytes:
            self._bytes[path] = path.read_bytes()
        return self._bytes[path]


def render(project: Project, spec: ImageSpec, files_cache: _TemplateFiles | None = None) -> Recipe:
    """Render one image's recipe in memory."""
    cache = files_cache or _TemplateFiles()
    env = environment(project)
    tdir = project.templates_dir / spec.template
    ctx = context(project, spec)
    files: dict[str, bytes] = {}
    for path in cache.j2(tdir):
        out_name = path.name[:-3]
        rel = f"{spec.template}/{path.name}"
        try:
            text = env.get_template(rel).render(ctx)
        except jinja2.UndefinedError as exc:
            raise InputError(f"{spec.source_file}: versions.{spec.key.version}: template {rel}: {exc.message}") from None
        except jinja2.TemplateSyntaxError as exc:
            raise InputError(f"{project.rel(tdir / path.name)}: line {exc.lineno}: template syntax error: "
                             f"{exc.message}") from None
        files[out_name] = text.encode()
    for rel in spec.context_files:
        files[rel] = cache.read(tdir / rel)
    return Recipe(spec=spec, directory=output_dir(project.rendered_dir, spec), files=files,
                  recipe_digest=digest_files(files))


def digest_files(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        data = files[name]
        h.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return "sha256:" + h.hexdigest()


def fingerprint(recipe: Recipe, parent_digest: str) -> str:
    """sha256 over the rendered recipe, the build context files and the resolved parent digest."""
    h = hashlib.sha256()
    h.update(recipe.recipe_digest.encode() + b"\0" + parent_digest.encode())
    return "sha256:" + h.hexdigest()


def output_dir(root: Path, spec: ImageSpec) -> Path:
    return root / spec.key.name / spec.key.dirname


def write(recipe: Recipe, directory: Path | None = None) -> Path:
    """Make a directory hold exactly the recipe's files: stale files, empty directories and symlinks go,
    files whose bytes already match are left alone (re-rendering an unchanged fleet writes nothing)."""
    target = directory or recipe.directory
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        target.unlink()
    existed = target.is_dir()
    if existed:
        for dirpath, dirnames, filenames in os.walk(target, topdown=False):
            here = Path(dirpath)
            for name in filenames + [d for d in dirnames if (here / d).is_symlink()]:
                path = here / name
                if path.is_symlink() or path.relative_to(target).as_posix() not in recipe.files:
                    path.unlink()
            for name in dirnames:
                path = here / name
                if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                    path.rmdir()
    made: set[Path] = set()
    for rel, data in recipe.files.items():
        path = target / rel
        if path.parent not in made:  # one mkdir per directory, not per file
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        if not existed:  # a new directory: nothing to compare with
            pass
        elif path.is_dir():
            shutil.rmtree(path)
        elif path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            continue
        path.write_bytes(data)
    return target


def render_all(project: Project, specs: Iterable[ImageSpec], out: Path | None = None) -> list[Recipe]:
    root = out or project.rendered_dir
    recipes = []
    cache = _TemplateFiles()
    for spec in specs:
        recipe = render(project, spec, cache)
        write(recipe, output_dir(root, spec))
        recipes.append(recipe)
    return recipes


def check(project: Project, specs: Iterable[ImageSpec], directory: Path) -> list[str]:
    """Unified diff lines between DIRECTORY and what would be rendered; empty when they agree."""
    diff: list[str] = []
    cache = _TemplateFiles()
    for spec in specs:
        recipe = render(project, spec, cache)
        base = output_dir(directory, spec)
        on_disk: dict[str, bytes] = {}
        if base.is_dir():
            for p in sorted(base.rglob("*")):
                if p.is_file():
                    on_disk[str(p.relative_to(base))] = p.read_bytes()
        for rel in sorted(set(on_disk) | set(recipe.files)):
            want = recipe.files.get(rel)
            have = on_disk.get(rel)
            if want == have:
                continue
            label = os.path.join(project.rel(base) if base.is_relative_to(project.root) else str(base), rel)
            a = (have or b"").decode(errors="replace").splitlines(keepends=True)
            b = (want or b"").decode(errors="replace").splitlines(keepends=True)
            diff += list(difflib.unified_diff(a, b, fromfile=f"{label} (on disk)" if have is not None else "/dev/null",
                                              tofile=f"{label} (rendered)" if want is not None else "/dev/null"))
    return diff
