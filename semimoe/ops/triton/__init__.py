"""Triton kernels of semimoe's ops.

Each module ``<op>.py`` holds the ``_<op>_*_kernel`` Triton kernels and their
``triton_<op>_*`` launchers. Importing a module imports ``triton``; the op
modules in :mod:`semimoe.ops` import these lazily, and validate the inputs
(one validator per op, shared with the launchers) before any launch.
"""
