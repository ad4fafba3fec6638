"""Trust for model files that hold native code.

An AOTInductor package (``.pt2``) holds a compiled shared library, and a
TensorRT engine (``.engine``) is deserialised by TensorRT's native code:
loading either runs code from the file, unlike a checkpoint (``.pt``, loaded
with ``weights_only``) or an ONNX file (a graph description). So semimoe runs
such a file only when it is trusted:

* files written by ``python -m semimoe.export`` on this machine are trusted
  automatically: their SHA-256 goes into a trust store (a JSON file,
  ``$SEMIMOE_TRUST_STORE``, default ``~/.config/semimoe/trusted-models.json``);
* any other file needs an explicit step: ``--trust-model`` on the command
  line (``trust=True`` in Python) for one run, or
  ``python -m semimoe.deploy.trust FILE`` to add it to the store.

The hash is checked on every load, so a file changed after it was trusted is
refused again.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

from ..errors import UntrustedModelError
from ..utils import atomic_write_text

__all__ = ["NATIVE_CODE_SUFFIXES", "store_path", "file_sha256", "trust", "is_trusted", "check_trusted", "main"]

NATIVE_CODE_SUFFIXES = (".pt2", ".engine", ".plan", ".trt")
TRUST_ENV = "SEMIMOE_TRUST_STORE"
PathLike = Union[str, os.PathLike]


def store_path() -> Path:
    env = os.environ.get(TRUST_ENV)
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "semimoe" / "trusted-models.json"


def file_sha256(path: PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_store() -> Dict[str, str]:
    p = store_path()
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # an unreadable store trusts nothing
    return d if isinstance(d, dict) else {}


def trust(path: PathLike) -> str:
    """Add ``path``'s SHA-256 to the trust store; returns the hash."""
    digest = file_sha256(path)
    d = _read_store()
    d[digest] = str(Path(path).resolve())
    p = store_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, json.dumps(d, indent=1, sort_keys=True) + "\n")
    return digest


def is_trusted(path: PathLike) -> bool:
    return file_sha256(path) in _read_store()


def check_trusted(path: PathLike, trusted: bool = False) -> None:
    """Raise :class:`~semimoe.errors.UntrustedModelError` unless ``path`` is in
    the trust store or ``trusted`` is set."""
    if trusted or is_trusted(path):
        return
    raise UntrustedModelError(
        f"{path} holds native code that runs when it is loaded, and it was not exported on this machine "
        f"(or it changed since): pass --trust-model (trust=True) if it comes from a source you trust, or "
        f"add it once with `python -m semimoe.deploy.trust {path}`")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or any(a.startswith("-") for a in args):
        print("usage: python -m semimoe.deploy.trust FILE [FILE ...]  (trust native-code model files)",
              file=sys.stderr)
        return 2
    for a in args:
        if not Path(a).is_file():
            print(f"error: {a} is not a file", file=sys.stderr)
            return 2
        print(f"trusted {a} (sha256 {trust(a)}) in {store_path()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
