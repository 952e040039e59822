"""bakery's state is never read from the repository.

The state directory (``state_dir``, default ``.bakery``: the scan store, the plan's label and build-tag caches,
nightly reports), the scanner's cache (``scanner.cache_dir``: the vulnerability DB) and a SQLite ledger live
inside the checkout by default. A pull request can add files anywhere, ``.gitignore`` or not (``git add -f``):
a forged stored scan would pass the scan gate, a forged DB hide findings, forged ledger events satisfy the
promotion gates, a forged label cache skip a rebuild. So a project whose state places hold files that git tracks
is refused (exit 2, naming them) before any command runs.

The check asks ``git ls-files`` once per state of the git index: a clean answer is remembered in
``$BAKERY_CACHE_DIR/statecheck/`` under the index file's identity (inode, size, mtime) and the places checked,
so a short command pays a ``stat``, not a subprocess. Outside a git checkout, or without git, there is nothing
a pull request could have committed: nothing is checked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bakery import cachedir
from bakery.configview import Project
from bakery.errors import BakeryError, ValidationError
from bakery.text import show

SHOWN = 5  # tracked files named per place


def places(project: Project) -> list[Path]:
    """The state places inside the project's root (a place outside it cannot come from the repository)."""
    config = project.config
    out = [project.state_dir, project.path(str(config.scanner.cache_dir))]
    url = str(config.ledger.url)
    if "://" not in url:
        out.append(project.path(url))
    root = project.root.resolve()
    inside = []
    for p in out:
        try:
            resolved = Path(os.path.abspath(p))
            if resolved.is_relative_to(root) and resolved != root:
                inside.append(resolved)
        except (OSError, ValueError):
            continue
    out = []
    for p in sorted(set(inside)):  # a place inside another (the DB or ledger in state_dir) is checked with it
        if not any(p.is_relative_to(q) for q in out):
            out.append(p)
    return out


def _git_dir(root: Path) -> Path | None:
    for d in (root, *root.parents):
        if (d / ".git").exists():
            return d / ".git"
    return None


def check(project: Project) -> None:
    """Raise ValidationError (exit 2) naming the files under the state places that git tracks."""
    problems = tracked(project)
    if problems:
        raise ValidationError(problems)


def tracked(project: Project) -> list[str]:
    """One line per state place that holds files git tracks (empty when none does, or outside a checkout)."""
    root = project.root.resolve()
    git = _git_dir(root)
    if git is None:
        return []
    state = places(project)
    if not state:
        return []
    rels = [os.path.relpath(p, root) for p in state]
    key = None
    if git.is_dir():  # (a worktree's .git is a file: asked every time)
        try:
            st = os.stat(git / "index")
            key = cachedir.sha256(json.dumps([str(root), rels, st.st_ino, st.st_size, st.st_mtime_ns]).encode()
                                 ).hexdigest()
        except OSError:
            key = None  # no index yet (nothing committed or staged): git answers quickly
    try:
        mark = cachedir.cache_dir("statecheck", f"{key}.ok") if key else None
    except RuntimeError:  # no home directory: nothing remembered
        mark = None
    if mark is not None and mark.exists():
        return []
    from bakery import tools  # (subprocess: only when the index changed since the last clean answer)

    try:
        result = tools.run("git", ["ls-files", "-z", "--", *rels], cwd=root, timeout=30, check=False)
    except BakeryError:  # no git: nothing a pull request could have committed is visible to bakery either
        return []
    if result.returncode != 0:
        return []  # not a work tree git can read (a bare directory, an unreadable index)
    files = [f for f in result.stdout.split("\0") if f]
    if not files:
        if mark is not None:
            try:
                mark.parent.mkdir(parents=True, exist_ok=True)
                mark.touch()
            except OSError:
                pass  # only a shortcut
        return []
    out = []
    for rel in rels:
        mine = [f for f in files if f == rel or f.startswith(rel.rstrip("/") + "/")]
        if mine:
            more = f" and {len(mine) - SHOWN} more" if len(mine) > SHOWN else ""
            out.append(f"{show(rel)}: {len(mine)} file(s) tracked by git ({', '.join(show(f) for f in mine[:SHOWN])}"
                       f"{more}): bakery's state (stored scans, the vulnerability DB, ledger, caches) is never read "
                       f"from the repository; remove them (git rm -r --cached {show(rel, quote=False)}) and keep "
                       f"the place in .gitignore")
    return out
