"""``aiokd train`` under ``torchrun``, recording on every process what the tests compare.

    torchrun --nproc_per_node 2 tests/ddp_train.py REPORT_DIR -- TRAIN_ARGS...

Each process writes ``REPORT_DIR/rank{r}.json``: the students it trained each update
(``{"stage/update": [[l_e, l_d], ...]}``) and, for each stage, the largest absolute difference
between its parameters and every other process's at the end of the stage (gathered with
``all_gather``).  Training itself runs unchanged.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from aiokd.cli import main
from aiokd.train.loop import Stage

report: dict[str, dict] = {"students": {}, "max_param_diff": {}}
real_students, real_run_to_end = Stage._students, Stage.run_to_end


def _students(self: Stage):
    chosen = real_students(self)
    report["students"][f"{self.stage}/{self.state.update}"] = chosen
    return chosen


def run_to_end(self: Stage, max_updates: int):
    state = real_run_to_end(self, max_updates)
    flat = torch.cat([p.detach().reshape(-1) for p in self.model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    report["max_param_diff"][str(self.stage)] = max(
        (other - flat).abs().max().item() for other in gathered)
    return state


if __name__ == "__main__":
    report_dir, separator, *train_args = sys.argv[1:]
    assert separator == "--", "usage: ddp_train.py REPORT_DIR -- TRAIN_ARGS..."
    Stage._students, Stage.run_to_end = _students, run_to_end
    try:
        main(["train", *train_args])
    finally:
        path = Path(report_dir) / f"rank{os.environ['RANK']}.json"
        path.write_text(json.dumps(report), encoding="utf-8")
