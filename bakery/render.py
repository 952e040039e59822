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
import stat
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

import jinja2

from bakery.configview import Project
from bakery.errors import InputError
from bakery.model import ImageSpec, Recipe
from bakery.ref import mirrored
from bakery import contain, sandbox
from bakery.contain import decode_problem


# Limits of one recipe's rendering (every template of one image). Exceeding either is exit 2 naming the template
# and the image. They are far above what a real Dockerfile or Packer template needs (milliseconds, kilobytes).
RENDER_SECONDS = 10.0
RENDER_MAX_BYTES = 8 * 1024 * 1024


@lru_cache(maxsize=8)
def _environment(templates_dir: str, root: str | None = None) -> jinja2.Environment:
    return sandbox.RecipeSandbox.for_templates(templates_dir, root or templates_dir)


def environment(project: Project) -> jinja2.Environment:
    return _environment(str(project.templates_dir), str(project.root))


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


MAX_CONTEXT_FILE = 64 * 1024 * 1024  # one file under a template's files/


class _TemplateFiles:
    """Per render run: each template directory's *.j2 names and context file bytes, read once (through
    bakery.contain: inside the repository, regular files only)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._j2: dict[Path, list[Path]] = {}
        self._bytes: dict[Path, bytes] = {}

    def j2(self, tdir: Path) -> list[Path]:
        if tdir not in self._j2:
            self._j2[tdir] = sorted(tdir.glob("*.j2"))
        return self._j2[tdir]

    def read(self, path: Path, display: str) -> bytes:
        if path not in self._bytes:
            self._bytes[path] = contain.read_bytes(self.root, path, display, limit=MAX_CONTEXT_FILE)
        return self._bytes[path]


def render(project: Project, spec: ImageSpec, files_cache: _TemplateFiles | None = None) -> Recipe:
    """Render one image's recipe in memory."""
    cache = files_cache or _TemplateFiles(project.root)
    env = environment(project)
    tdir = project.templates_dir / spec.template
    ctx = context(project, spec)
    files: dict[str, bytes] = {}
    budget = [RENDER_MAX_BYTES]
    sandbox.start(RENDER_SECONDS)
    try:
        for path in cache.j2(tdir):
            out_name = path.name[:-3]
            files[out_name] = _render_one(project, spec, env, tdir, path, ctx, budget).encode()
    finally:
        sandbox.stop()
    for rel in spec.context_files:
        files[rel] = cache.read(tdir / rel, project.rel(tdir / rel))
    return Recipe(spec=spec, directory=output_dir(project.rendered_dir, spec), files=files,
                  recipe_digest=digest_files(files))


def _render_one(project: Project, spec: ImageSpec, env: jinja2.Environment, tdir: Path, path: Path,
                ctx: dict[str, object], budget: list[int]) -> str:
    rel = f"{spec.template}/{path.name}"
    try:
        return sandbox.render_limited(env.get_template(rel), ctx, budget)
    except sandbox.RenderLimit as exc:
        raise InputError(f"{project.rel(path)}: {exc.message} (rendering {spec.key}; limits per recipe: "
                         f"{RENDER_SECONDS:g}s, {RENDER_MAX_BYTES} bytes)") from None
    except jinja2.UndefinedError as exc:
        raise InputError(f"{spec.source_file}: versions.{spec.key.version}: template {rel}: {exc.message}") from None
    except jinja2.TemplateSyntaxError as exc:
        where = project.rel(Path(exc.filename)) if exc.filename else project.rel(tdir / path.name)
        raise InputError(f"{where}: line {exc.lineno}: template syntax error: {exc.message}") from None
    except (RecursionError, MemoryError) as exc:
        raise InputError(f"{project.rel(path)}: {type(exc).__name__} (rendering {spec.key}): the template "
                         f"recurses too deep or builds too much") from None
    except Exception as exc:  # noqa: BLE001 - anything a template can raise is a problem of that template
        raise _template_error(project, spec, tdir / path.name, exc) from None


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
    if isinstance(exc, sandbox.UnsafeTemplateFile):
        what = f"the included template {exc.message}"
    elif isinstance(exc, jinja2.TemplateNotFound):
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
    """Make a recipe directory (``OUT/NAME/VERSION[-VARIANT]``) hold exactly the recipe's files, safely.

    Nothing below the output directory is followed: a symlink where the family or recipe directory should be is
    removed (the link, never its target) and a real directory takes its place. The files are written into a
    fresh temporary directory beside the recipe directory and swapped in by rename; the previous recipe directory
    (bakery's own output) is then removed without following any symlink in it. Nothing outside the recipe
    directory is touched, so a file of the user's elsewhere in the output directory stays. A recipe directory
    that already holds exactly these files is left alone (re-rendering an unchanged fleet writes nothing).
    An unwritable destination is an InputError (exit 2) naming it.

    Two processes may write the same recipe at once (two `bakery build` of one image): the swap is lock-free,
    and a rename that finds the other writer's directory in its way checks it again: the same files, then the
    recipe is there; otherwise the swap is tried again (a few times, then the error is reported)."""
    import errno

    target = directory or recipe.directory
    for attempt in range(_SWAP_TRIES):
        try:
            return _write_once(recipe, target)
        except OSError as exc:
            raced = exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT)
            if raced and target.is_dir() and not target.is_symlink() and _holds_exactly(target, recipe.files):
                return target  # another writer put exactly these files there
            if not raced or attempt == _SWAP_TRIES - 1:
                where = exc.filename or target
                raise InputError(f"{where}: cannot write the recipe there ({exc.strerror or type(exc).__name__})"
                                 ) from None
    raise AssertionError("unreachable")


_SWAP_TRIES = 5


def _write_once(recipe: Recipe, target: Path) -> Path:
    """One attempt of :func:`write` (OSError escapes: write decides whether it was a race)."""
    import stat
    import tempfile

    family = target.parent
    kinds: list[int | None] = []
    for path in (family, target):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            kinds.append(None)
            continue
        if stat.S_ISLNK(st.st_mode):
            path.unlink()  # the link only: its target is never read, written or deleted
            kinds.append(None)
        elif not stat.S_ISDIR(st.st_mode):
            raise InputError(f"{path}: is {_kind(st.st_mode)} where bakery writes a recipe directory; move it "
                             f"away (bakery does not delete what it did not write)")
        else:
            kinds.append(st.st_mode)
    if kinds[0] is None:
        family.mkdir(parents=True, exist_ok=True)
    elif kinds[1] is not None and _holds_exactly(target, recipe.files):
        return target
    fresh = Path(tempfile.mkdtemp(prefix=".bakery-new-", dir=family))
    old: Path | None = None
    try:
        os.chmod(fresh, 0o755)
        made = {fresh}
        for rel, data in sorted(recipe.files.items()):
            path = fresh / rel
            if path.parent not in made:
                path.parent.mkdir(parents=True, exist_ok=True)
                made.add(path.parent)
            with open(path, "xb") as fh:  # a fresh directory: nothing to follow or overwrite
                fh.write(data)
        if kinds[1] is not None:
            old = Path(tempfile.mkdtemp(prefix=".bakery-old-", dir=family))
            os.rename(target, old / "recipe")
            os.rename(fresh, target)
            shutil.rmtree(old)  # symlink-safe: links inside are removed, never followed
        else:
            os.rename(fresh, target)
    finally:
        for leftover in (fresh, old):  # a lost race leaves neither a half-swapped nor an empty directory
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
    return target


def _kind(mode: int) -> str:
    return contain.describe_mode(mode)


def _holds_exactly(directory: Path, files: dict[str, bytes]) -> bool:
    """Whether DIRECTORY holds exactly FILES: regular files with these bytes, no other entry, no symlink."""
    import stat

    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(directory):
        here = Path(dirpath)
        if not dirnames and not filenames and here != directory:
            return False  # an empty directory
        for name in dirnames:
            if (here / name).is_symlink():
                return False
        for name in filenames:
            path = here / name
            rel = path.relative_to(directory).as_posix()
            st = os.lstat(path)
            want = files.get(rel)
            if want is None or not stat.S_ISREG(st.st_mode) or st.st_size != len(want) or path.read_bytes() != want:
                return False
            seen.add(rel)
    return seen == set(files)


def render_all(project: Project, specs: Iterable[ImageSpec], out: Path | None = None) -> list[Recipe]:
    """Render every spec in memory first (a template problem stops before anything is written), then write each
    recipe directory safely (see ``write``)."""
    root = out or project.rendered_dir
    cache = _TemplateFiles(project.root)
    recipes = [render(project, spec, cache) for spec in specs]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{root}: cannot write there ({exc.strerror or type(exc).__name__})") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise InputError(f"{root}: cannot write there (permission denied)")
    for recipe in recipes:
        write(recipe, output_dir(root, recipe.spec))
    return recipes


def check(project: Project, specs: Iterable[ImageSpec], directory: Path, *, whole: bool = False) -> list[str]:
    """Unified diff lines between DIRECTORY and what would be rendered; empty when they agree.

    Inside each recipe directory, everything `render --out` would remove counts as a difference (an extra
    file, an empty directory, a symlink). With ``whole`` (the whole fleet was selected), files and
    directories of DIRECTORY outside every recipe directory count too: a recipe of an image that is gone."""
    diff: list[str] = []
    cache = _TemplateFiles(project.root)
    specs = list(specs)

    def label(path: Path) -> str:
        return project.rel(path) if path.is_relative_to(project.root) else str(path)

    for spec in specs:
        recipe = render(project, spec, cache)
        base = output_dir(directory, spec)
        on_disk: dict[str, bytes] = {}
        if base.parent.is_symlink():  # never followed: what it points to is not bakery's output
            diff.append(f"{label(base.parent)}: a symlink (`render --out` would replace it)\n")
        elif base.is_symlink() or (base.exists() and not base.is_dir()):
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
                        if not stat.S_ISREG(os.lstat(p).st_mode):  # a FIFO would block a read forever
                            diff.append(f"{label(p)}: not a regular file (`render --out` would remove it)\n")
                            continue
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
