"""Two `bakery build` of one image render the same recipe at once: both must end with the recipe in place.

Found when the lock-free swap of `render --out` (issue 11) met ten concurrent builds (issue 10): the second
rename found the first writer's directory in its way and the build failed with "Directory not empty"."""

from __future__ import annotations

import threading
from pathlib import Path

from bakery import render
from bakery.model import Recipe

FILES = {"Dockerfile": b"FROM scratch\n", "files/motd": b"hello\n"}
WRITERS, ROUNDS = 8, 25


def test_concurrent_writers_of_one_recipe_all_succeed(tmp_path: Path) -> None:
    barrier = threading.Barrier(WRITERS)
    errors: list[BaseException] = []

    def writer() -> None:
        for i in range(ROUNDS):
            target = tmp_path / "app" / f"1.{i}"
            recipe = Recipe(spec=None, directory=target, files=FILES, recipe_digest="sha256:x")  # type: ignore[arg-type]
            barrier.wait()  # every writer finds the recipe directory missing at the same moment
            try:
                render.write(recipe)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, [str(e) for e in errors[:3]]
    for i in range(ROUNDS):
        target = tmp_path / "app" / f"1.{i}"
        assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == sorted(FILES)
    # no half-swapped or temporary directory is left beside the recipes
    assert sorted(p.name for p in (tmp_path / "app").iterdir()) == sorted(f"1.{i}" for i in range(ROUNDS))
