"""The one wrapper around external tools (trivy, packer, skopeo, git, hadolint...).

Resolves the binary, applies a timeout, logs the command with secrets masked, and maps failures to
typed errors: a missing binary or a timeout is an environment failure (exit 3); a non-zero exit is a
:class:`ToolFailed` whose exit code the caller chooses.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bakery import secrets
from bakery.errors import EXIT_FAILED, ToolFailed, ToolMissing, ToolTimeout

if TYPE_CHECKING:
    import subprocess

# Start-up: subprocess, shutil, shlex and logging (~6 ms of imports) load when a tool is looked up on PATH or run,
# not when this module is imported: a repeat scan served from the store resolves trivy by its path and runs nothing.


@dataclass(frozen=True)
class ToolResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def resolve(binary: str, *, hint: str = "") -> str:
    """Return the absolute path of ``binary`` (a name on PATH or a path), or raise ToolMissing."""
    if os.sep in binary:
        if os.path.isfile(binary) and os.access(binary, os.X_OK):
            return binary
        raise ToolMissing(f"{binary}: not found or not executable{hint}")
    import shutil

    found = shutil.which(binary)
    if not found:
        raise ToolMissing(f"{binary}: not found on PATH{hint}")
    return found


def display(argv: Sequence[str]) -> str:
    """The command line as a user could paste it, secrets masked."""
    import shlex

    return secrets.mask(" ".join(shlex.quote(a) for a in argv))


def run(
    binary: str,
    args: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    check: bool = True,
    failure_exit_code: int = EXIT_FAILED,
    on_line: Callable[[str], None] | None = None,
    hint: str = "",
    input_text: str | None = None,
    process_group: bool = False,
    merge_stderr: bool = False,
) -> ToolResult:
    """Run a tool and return its output.

    ``on_line`` streams stdout line by line (for progress); stderr is captured either way.
    ``check`` raises :class:`ToolFailed` (with ``failure_exit_code``) on a non-zero exit.
    ``process_group``: run the tool in its own session (process group) and, on timeout or interruption, send
    the whole group SIGTERM (then SIGKILL after a grace period) so that tools with helper processes (Packer's
    plugins, a scanner wrapper's children) stop instead of outliving bakery or holding the output pipe open.
    ``merge_stderr`` (with ``on_line``): stream stderr with stdout (tools that report progress on stderr,
    like ``docker build --progress=plain``); the result's ``stderr`` is then empty.
    """
    import logging
    import subprocess
    import time

    path = resolve(binary, hint=hint)
    argv = [path, *map(str, args)]
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    logging.getLogger("bakery.tools").debug("run: %s", display(argv))
    name = os.path.basename(path)
    started = time.monotonic()
    try:
        if on_line is None and process_group:
            stdout, stderr, code = _run_group(argv, timeout, full_env, cwd, input_text)
        elif on_line is None:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full_env,
                                  cwd=cwd, input=input_text, errors="replace")
            stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
        else:
            stdout, stderr, code = _run_streaming(argv, timeout, full_env, cwd, on_line, process_group,
                                                  merge_stderr)
    except subprocess.TimeoutExpired as exc:
        raise ToolTimeout(f"{name} timed out after {timeout:g}s: {display(argv)}") from exc
    except FileNotFoundError as exc:
        raise ToolMissing(f"{binary}: not found{hint}") from exc
    seconds = time.monotonic() - started
    result = ToolResult(argv, code, stdout, stderr, seconds)
    if check and code != 0:
        last = _last_line(stderr) or _last_line(stdout) or f"exit status {code}"
        raise ToolFailed(secrets.mask(f"{name} failed (exit {code}): {last}"), returncode=code,
                         stderr=secrets.mask(stderr), stdout=secrets.mask(stdout), exit_code=failure_exit_code)
    return result


def _last_line(text: str) -> str:
    for line in reversed((text or "").strip().splitlines()):
        if line.strip():
            return line.strip()
    return ""


GROUP_GRACE_SECONDS = 30.0


def _stop_group(proc: subprocess.Popen, grace: float = GROUP_GRACE_SECONDS) -> None:
    """SIGTERM the process group, SIGKILL it when still alive after ``grace`` seconds."""
    import signal
    import time

    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        end = time.monotonic() + wait
        while time.monotonic() < end:
            proc.poll()  # reap the leader: a zombie still counts as a member of its group
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.2)


def _run_group(argv, timeout, env, cwd, input_text):
    """Collect stdout and stderr of a tool running in its own session; on timeout or interruption the whole
    group is stopped (a child the tool started does not survive it)."""
    import subprocess

    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                            errors="replace", start_new_session=True)
    try:
        stdout, stderr = proc.communicate(input_text, timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        proc.communicate()
        raise
    except BaseException:
        _stop_group(proc)
        raise
    return stdout, stderr, proc.returncode


def _run_streaming(argv, timeout, env, cwd, on_line, process_group=False, merge_stderr=False):
    """Stream stdout to ``on_line`` while collecting stderr. On timeout or interruption stop the tool: its
    whole process group with ``process_group`` (SIGTERM, then SIGKILL), else the process itself."""
    import subprocess
    import threading

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE, text=True, env=env,
                            cwd=cwd, errors="replace", start_new_session=process_group)

    def stop() -> None:
        if process_group:
            _stop_group(proc)
        else:
            proc.kill()

    err_chunks: list[str] = []
    out_chunks: list[str] = []
    timed_out = threading.Event()

    def pump_err():
        if proc.stderr is None:  # merged into stdout
            return
        for chunk in proc.stderr:
            err_chunks.append(chunk)

    def expire():
        timed_out.set()
        stop()

    t = threading.Thread(target=pump_err, daemon=True)
    t.start()
    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out_chunks.append(line)
            on_line(line.rstrip("\n"))
        proc.wait()
    except BaseException:
        timer.cancel()
        stop()
        raise
    finally:
        timer.cancel()
    t.join(timeout=5)
    if timed_out.is_set():
        raise subprocess.TimeoutExpired(argv, timeout)
    return "".join(out_chunks), "".join(err_chunks), proc.returncode
