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
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

import jinja2

from bakery.configview import Project
from bakery.errors import InputError
from bakery.model import ImageSpec, Recipe
from bakery.ref import mirrored
from bakery.validation import decode_problem


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
        return mirrored(spec.parent.reference, project.config.mirrors)
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
            where = project.rel(Path(exc.filename)) if exc.filename else project.rel(tdir / path.name)
            raise InputError(f"{where}: line {exc.lineno}: template syntax error: {exc.message}") from None
        except Exception as exc:  # noqa: BLE001 - anything a template can raise is a problem of that template
            raise _template_error(project, spec, tdir / path.name, exc) from None
        files[out_name] = text.encode()
    for rel in spec.context_files:
        files[rel] = cache.read(tdir / rel)
    return Recipe(spec=spec, directory=output_dir(project.rendered_dir, spec), files=files,
                  recipe_digest=digest_files(files))


def _template_error(project: Project, spec: ImageSpec, path: Path, exc: Exception) -> InputError:
    """``TEMPLATE: line N: what went wrong (rendering IMAGE)`` for an error raised while rendering a template:
    the innermost template line of the traceback (Jinja maps its frames to template lines)."""
    import traceback

    root = project.templates_dir.resolve()
    where = project.rel(path)
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        frame_path = Path(frame.filename)
        if frame_path.suffix == ".j2" and frame_path.resolve().is_relative_to(root):
            where = f"{project.rel(frame_path)}: line {frame.lineno}"
            break
    if isinstance(exc, jinja2.TemplateNotFound):
        what = f"template {exc.name!r} not found under {project.rel(project.templates_dir)}/"
    elif isinstance(exc, UnicodeDecodeError):
        problem = decode_problem(exc.object, exc) if isinstance(exc.object, bytes) else "not valid UTF-8"
        what = problem if where == project.rel(path) else f"the included template: {problem}"
    elif isinstance(exc, jinja2.TemplateError):
        what = f"template error: {exc.message or type(exc).__name__}"
    else:
        what = f"{type(exc).__name__}: {exc}"
    return InputError(f"{where}: {what} (rendering {spec.key})")


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


def check(project: Project, specs: Iterable[ImageSpec], directory: Path, *, whole: bool = False) -> list[str]:
    """Unified diff lines between DIRECTORY and what would be rendered; empty when they agree.

    Inside each recipe directory, everything `render --out` would remove counts as a difference (an extra
    file, an empty directory, a symlink). With ``whole`` (the whole fleet was selected), files and
    directories of DIRECTORY outside every recipe directory count too: a recipe of an image that is gone."""
    diff: list[str] = []
    cache = _TemplateFiles()
    specs = list(specs)

    def label(path: Path) -> str:
        return project.rel(path) if path.is_relative_to(project.root) else str(path)

    for spec in specs:
        recipe = render(project, spec, cache)
        base = output_dir(directory, spec)
        on_disk: dict[str, bytes] = {}
        if base.is_symlink() or (base.exists() and not base.is_dir()):
            diff.append(f"{label(base)}: not a directory (`render --out` would replace it)\n")
        elif base.is_dir():
            for dirpath, dirnames, filenames in os.walk(base):
                here = Path(dirpath)
                for name in sorted(dirnames + filenames):
                    p = here / name
                    rel = p.relative_to(base).as_posix()
                    if p.is_symlink():
                        diff.append(f"{label(p)}: a symlink (`render --out` would remove it)\n")
                        if name in dirnames:
                            dirnames.remove(name)
                    elif name in filenames:
                        on_disk[rel] = p.read_bytes()
                    elif not any(p.iterdir()):
                        diff.append(f"{label(p)}/: an empty directory (`render --out` would remove it)\n")
        for rel in sorted(set(on_disk) | set(recipe.files)):
            want = recipe.files.get(rel)
            have = on_disk.get(rel)
            if want == have:
                continue
            name = os.path.join(label(base), rel)
            if want is None:
                diff += _removed(f"{name} (on disk)", have or b"")
                continue
            a = (have or b"").decode(errors="replace").splitlines(keepends=True)
            b = want.decode(errors="replace").splitlines(keepends=True)
            diff += list(difflib.unified_diff(a, b, fromfile=f"{name} (on disk)" if have is not None else "/dev/null",
                                              tofile=f"{name} (rendered)"))
    if whole and directory.is_dir():
        diff += _stale(directory, {output_dir(directory, s) for s in specs}, label)
    return diff


def _removed(fromfile: str, data: bytes) -> list[str]:
    """The diff of a file that would be removed (its header even when it is empty)."""
    lines = data.decode(errors="replace").splitlines(keepends=True)
    return list(difflib.unified_diff(lines, [], fromfile=fromfile, tofile="/dev/null")) or [
        f"--- {fromfile}\n", "+++ /dev/null\n"]


def _stale(directory: Path, recipe_dirs: set[Path], label: Callable[[Path], str]) -> list[str]:
    """Files under DIRECTORY outside every recipe directory (a recipe of an image no longer in the fleet)."""
    ancestors = {parent for d in recipe_dirs for parent in d.parents}
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        here = Path(dirpath)
        for name in sorted(dirnames):
            if here / name in recipe_dirs:
                dirnames.remove(name)
        for name in sorted(filenames + [d for d in dirnames if (here / d).is_symlink()]):
            p = here / name
            text = b"" if p.is_symlink() or not p.is_file() else p.read_bytes()
            out += _removed(f"{label(p)} (on disk)", text)
        for name in list(dirnames):
            p = here / name
            if p.is_symlink():
                dirnames.remove(name)
            elif p not in ancestors and not any(p.iterdir()):
                out.append(f"{label(p)}/: an empty directory that no image renders\n")
    return out
