"""The run folder: which one a run uses, and a lock so that two runs never
share it."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from ..errors import ConfigError

__all__ = ["resolve_run_dir", "RunLock"]


def resolve_run_dir(run_dir: Optional[str], preset: Optional[str], resume: bool, start_if_missing: bool,
                    overwrite: bool) -> Path:
    """The folder of a run.

    * ``resume``: ``run_dir`` must hold ``last.pt`` -- unless
      ``start_if_missing``, which starts a new run there instead;
    * a new run in a folder that holds one is refused unless ``overwrite``;
      without an explicit ``run_dir`` the next free ``runs/<preset>_<k>`` is used.
    """
    explicit = run_dir is not None
    base = Path(run_dir) if explicit else Path("runs") / (preset or "default")
    has_run = (base / "last.pt").exists()
    if resume:
        if not has_run and not start_if_missing:
            where = f"{base} does not exist" if not base.exists() else f"{base} holds no last.pt"
            raise ConfigError(f"--resume: {where}; check --run-dir, or pass --resume-or-start to start a "
                              "new run when there is nothing to resume")
        return base
    if overwrite or not has_run:
        return base
    if explicit:
        raise ConfigError(f"run_dir {base} already holds a run (last.pt); pass --resume to continue it "
                          "or --overwrite to start over there")
    k = 1
    while (base.parent / f"{base.name}_{k}" / "last.pt").exists():
        k += 1
    return base.parent / f"{base.name}_{k}"


class RunLock:
    """An exclusive lock on a run folder (``<folder>/.lock``, ``flock``): a
    second run in the same folder fails at once instead of racing on the
    checkpoints and the log. The operating system releases it when the
    process ends, even by ``kill -9``. (No lock where ``fcntl`` is missing.)"""

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self.fd: Optional[int] = None
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"{folder} is in use by another training run (pid {other}); wait for it to "
                              "finish, or pick another --run-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is None:
            return
        import fcntl

        self.path.unlink(missing_ok=True)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
