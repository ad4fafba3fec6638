"""Triton kernels of semimoe (imported as ``semimoe.kernels`` through a symlink).

Each module ``<op>.py`` holds ``_<op>_*_kernel`` Triton kernels and their
``triton_<op>_*`` launchers. Importing a module imports ``triton``; the op
modules in ``semimoe.ops`` import these lazily.
"""
