"""Run logging: ``metrics.csv`` (always) and TensorBoard (when installed)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

__all__ = ["RunLogger"]


class RunLogger:
    """metrics.csv (always) and TensorBoard (when installed); rank 0 only.

    ``fields``: the CSV columns (the trainer's and its method's log keys);
    rows logged after ``resume_step`` by a killed run are dropped on resume.
    """

    def __init__(self, run_dir: Path, enabled: bool, resume_step: Optional[int], fields: Sequence[str]):
        self.enabled = enabled
        self.fields = ["step"] + [f for f in fields if f != "step"]
        self.csv_path = run_dir / "metrics.csv"
        self.tb = None
        self.tb_note = ""
        if not enabled:
            return
        if resume_step is not None and self.csv_path.exists():
            # drop rows logged after the checkpoint we resume from (a killed
            # run may have logged further before dying)
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= resume_step]
            with open(self.csv_path, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self.fields)
                w.writeheader()
                for r in rows:
                    w.writerow({k: r.get(k, "") for k in self.fields})
        else:
            with open(self.csv_path, "w", newline="") as f:
                csv.DictWriter(f, fieldnames=self.fields).writeheader()
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)
        except Exception as e:  # tensorboard is optional
            self.tb_note = f"TensorBoard logging off ({type(e).__name__}: {e}); metrics.csv has everything"

    def log(self, step: int, row: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {k: ("" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)) for k, v in row.items()}
        row["step"] = step
        with open(self.csv_path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if k in ("step", "epoch") or v == "":
                    continue
                try:
                    self.tb.add_scalar(k, float(v), step)
                except (TypeError, ValueError):
                    pass

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
