"""Independent reference computations shared by several test files (brute
force from the published definitions; never calls the code under test)."""
import numpy as np


def brute_object_counts(s, g):
    """GlaS detection counts by explicit double loops over segmented and
    ground-truth objects (module doc): S_j is a TP iff its max-overlap partner
    G_i (ties: smallest label) has |S_j ∩ G_i| > 0.5 |G_i|; a G_i is found iff
    some TP S_j has it as partner."""
    g_ids = [k for k in np.unique(g) if k > 0]
    s_ids = [k for k in np.unique(s) if k > 0]
    tp = fp = 0
    found = set()
    for j in s_ids:
        obj = s == j
        best, best_ov = None, 0
        for i in g_ids:
            ov = int(np.count_nonzero(obj & (g == i)))
            if ov > best_ov:
                best, best_ov = i, ov
        if best is not None and best_ov > 0.5 * np.count_nonzero(g == best):
            tp += 1
            found.add(best)
        else:
            fp += 1
    fn = sum(1 for i in g_ids if i not in found)
    return tp, fp, fn
