"""``python -m semimoe.train``: train Semi-MoE (or another method) from the command line.

Usage::

    python -m semimoe.train                                  # cpu-demo preset, synthetic data
    python -m semimoe.train --preset paper data.kind=glas data.root=/data/GlaS
    python -m semimoe.train --config my.yaml train.iterations=2000 model.gate=spatial
    python -m semimoe.train train.method=supervised          # the supervised baseline
    python -m semimoe.train --preset cpu-demo --resume       # continue runs/cpu-demo/last.pt
    torchrun --nproc_per_node=2 -m semimoe.train --preset fast

Configuration: :mod:`semimoe.config` (``--print-config`` shows the resolved
YAML). The engine: :class:`semimoe.training.Trainer` with the method
``train.method`` (:data:`semimoe.training.METHODS`).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .config import PRESETS, dump_yaml, make_config
from .errors import run_cli
from .training import CKPT_FORMAT, Trainer, lr_factor, train

__all__ = ["train", "main", "lr_factor", "CKPT_FORMAT", "Trainer"]


# ----------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m semimoe.train",
        description="Train Semi-MoE. Without arguments: the cpu-demo preset on synthetic glands "
                    "(trains, evaluates, writes overlays).",
        epilog="Overrides are dotted key=value pairs, e.g. train.iterations=1000 model.gate=image "
               "data.label_ratio=0.2 optim.lr=0.01; --print-config lists every key. User errors end in one "
               "'error:' line (exit 2); --debug shows their traceback.")
    p.add_argument("--config", help="YAML config file (may name a preset)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="start from a preset (default cpu-demo when no --config is given)")
    p.add_argument("--run-dir", help="output folder (default runs/<preset>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from <run-dir>/last.pt (an error if there is none)")
    p.add_argument("--resume-or-start", action="store_true",
                   help="continue from <run-dir>/last.pt if it exists, else start a new run there")
    p.add_argument("--overwrite", action="store_true", help="start over in a run folder that holds a run")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML (usable as --config) and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def _main(argv: Sequence[str]) -> int:
    args = _parser().parse_intermixed_args(argv)
    preset = args.preset
    if preset is None and args.config is None:
        preset = "cpu-demo"
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    cfg = make_config(preset, args.config, overrides)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    Trainer(cfg).fit(resume=args.resume or args.resume_or_start, overwrite=args.overwrite,
                     start_if_missing=args.resume_or_start)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; user errors become one ``error:`` line and exit status 2."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
