"""Promotions recorded in version control: annotated git tags ``ENV/NAME/BUILD_TAG`` in the definitions
repository, at the revision the image was built from (its ``org.opencontainers.image.revision`` label),
so that ``git log --tags`` / ``git tag -l 'prod/*'`` show what went where."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bakery import ledger, tools
from bakery.errors import StepFailed
from bakery.model import OCI, Published

if TYPE_CHECKING:
    from bakery.config import Project

LABEL_REVISION = OCI + "revision"


def tag_name(env: str, pub: Published) -> str:
    return f"{env}/{pub.key.name}/{pub.build_tag}"


def _git(root: str, *args: str, check: bool = False) -> tools.ToolResult:
    return tools.run("git", list(args), cwd=root, timeout=30, check=check)


def tag_promotion(project: Project, env: str, pub: Published, labels: dict[str, str]) -> str:
    """Create (or confirm) the annotated tag for ``pub`` in ``env``; an existing tag is never moved."""
    revision = labels.get(LABEL_REVISION)
    if not revision or revision == "unknown":
        raise StepFailed(f"{pub.key}: image has no {LABEL_REVISION} label: cannot create the git tag")
    if revision.endswith("-dirty"):
        raise StepFailed(f"{pub.key}: built from uncommitted changes ({revision[:12]}…-dirty): no git tag can name "
                         f"its revision; commit the definitions and rebuild")
    tag = tag_name(env, pub)
    root = str(project.root)
    if _git(root, "rev-parse", "--git-dir").returncode != 0:
        raise StepFailed(f"{root} is not a git repository: cannot create the git tag {tag}")
    if _git(root, "cat-file", "-e", f"{revision}^{{commit}}").returncode != 0:
        raise StepFailed(f"revision {revision[:12]} (from the image label) is not in the repository at {root}")
    existing = _git(root, "rev-parse", "-q", "--verify", f"refs/tags/{tag}^{{commit}}")
    if existing.returncode == 0:
        have = existing.stdout.strip()
        want = _git(root, "rev-parse", f"{revision}^{{commit}}").stdout.strip()
        if want == have:
            return tag
        raise StepFailed(f"git tag {tag} exists at another revision ({have[:12]}); not moved")
    who = ledger.actor()
    message = f"{pub.key} {pub.build_tag} promoted to {env}\n\ndigest: {pub.digest}\nactor: {who}\n"
    ident: list[str] = []
    if _git(root, "config", "user.email").returncode != 0:  # CI runners have no git identity
        ident = ["-c", f"user.name={who}", "-c", "user.email=bakery@localhost"]
    _git(root, *ident, "tag", "-a", "-m", message, tag, revision, check=True)
    return tag
