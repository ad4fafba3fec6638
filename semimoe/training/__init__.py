"""The training engine (docs/METHOD.md §4).

* :class:`Trainer` -- the run as a short sequence of hooks (setup, train
  step, validation, checkpoints, finish);
* :mod:`.methods` -- training methods (:data:`METHODS`: ``supervised``,
  ``semimoe``; :mod:`.weak`: ``weak-ikd``; :mod:`.icmoe`: ``icmoe``) that plug
  into the trainer;
* :mod:`.schedule`, :mod:`.streams`, :mod:`.checkpoint`,
  :mod:`.distributed`, :mod:`.logger` -- the parts the trainer is made of.

The command line is ``python -m semimoe.train`` (:mod:`semimoe.train`).
"""
from .checkpoint import CKPT_FORMAT
from .methods import METHODS, Method, SemiMoEMethod, SupervisedMethod, register_method
from .schedule import Schedule, lr_factor
from .trainer import Trainer, train
from .weak import WeakIKDMethod
from .icmoe import ICMoEMethod

__all__ = ["Trainer", "train", "Method", "SupervisedMethod", "SemiMoEMethod", "METHODS", "register_method",
           "WeakIKDMethod", "ICMoEMethod", "Schedule", "lr_factor", "CKPT_FORMAT"]
