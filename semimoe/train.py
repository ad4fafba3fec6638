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

from .config import PRESETS, ConfigError, dump_yaml, make_config
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
               "data.label_ratio=0.2 optim.lr=0.01; --print-config lists every key.")
    p.add_argument("--config", help="YAML config file (may name a preset)")
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="start from a preset (default cpu-demo when no --config is given)")
    p.add_argument("--run-dir", help="output folder (default runs/<preset>)")
    p.add_argument("--resume", action="store_true", help="continue from <run-dir>/last.pt if it exists")
    p.add_argument("--overwrite", action="store_true", help="start over in a run folder that holds a run")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    preset = args.preset
    if preset is None and args.config is None:
        preset = "cpu-demo"
    overrides = list(args.overrides)
    if args.run_dir:
        overrides.append(f"run_dir={args.run_dir}")
    try:
        cfg = make_config(preset, args.config, overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    try:
        Trainer(cfg).fit(resume=args.resume, overwrite=args.overwrite)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
