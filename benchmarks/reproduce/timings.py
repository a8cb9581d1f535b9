"""What every step of the benchmark cost, and on which machine: ``W/timings.json``.

Keys: ``KEY`` -> wall seconds of the step ``KEY``, ``cpu:KEY`` -> its CPU seconds (user + system
of the ``aiokd`` subprocess), each summed over the step's attempts, and ``machine:KEY`` -> its
cost by the machine each attempt ran on: CPU seconds on a CPU
(:func:`aiokd.model.probe.cpu_description`), wall seconds on a GPU (its name).  Costs are only
comparable on one machine: the same training takes several times the CPU-minutes on a CPU
without native bf16 as on one with it.  A step resumed on another machine (a benchmark that
outlives a machine) so keeps both parts apart; the cost counted before machines were recorded
is :data:`NOT_RECORDED`.
"""

from __future__ import annotations

import json
import os
import resource
from functools import cache
from pathlib import Path

import torch
from locks import locked

from aiokd.io import atomic_write_json
from aiokd.model.probe import cpu_description

CPU = "cpu:"
"""Prefix of the keys that hold a step's CPU seconds."""
MACHINE = "machine:"
"""Prefix of the keys that hold a step's cost by machine."""
NOT_RECORDED = "not recorded"
"""The machine of the cost counted before machines were recorded."""
FLUSH_SECONDS = 30
"""How often a running step's time is added: a driver killed without warning (a machine shut
down) loses at most this much of the step's cost."""


@cache
def this_machine() -> str:
    """The machine the steps run on: the GPU where there is one (steps train there), else the
    CPU."""
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return f"CPU: {cpu_description()}"


class Timings:
    """``W/timings.json``, re-read before each change under :func:`locked`, so that concurrent
    drivers add up."""

    def __init__(self, path: Path):
        self.path = path
        self.seconds: dict[str, float | dict[str, float]] = {}
        self.reload()

    def reload(self) -> None:
        self.seconds = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def add(self, key: str, wall: float, cpu: float = 0.0) -> None:
        with locked(self.path.parent):
            self.reload()
            for name, seconds in ((key, wall), (CPU + key, cpu)):
                self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            machines, machine = self.seconds.setdefault(MACHINE + key, {}), this_machine()
            cost = wall if machine.startswith("GPU") else cpu
            machines[machine] = machines.get(machine, 0.0) + cost
            atomic_write_json(self.path, self.seconds)

    def minutes(self, key: str) -> float:
        return round(self.seconds.get(key, 0.0) / 60, 2)

    def cost_minutes(self, key: str, gpu: bool) -> float:
        """The cost of a step: device-minutes on a GPU, CPU-minutes on a CPU."""
        return self.minutes(key if gpu or CPU + key not in self.seconds else CPU + key)

    def machine_minutes(self, key: str, gpu: bool) -> dict[str, float]:
        """:meth:`cost_minutes` of the step ``key`` by machine, :data:`NOT_RECORDED` for the
        part counted before machines were recorded (none when it is under a second)."""
        recorded = {machine: seconds / 60 for machine, seconds
                    in self.seconds.get(MACHINE + key, {}).items()}
        unknown = self.cost_minutes(key, gpu) - sum(recorded.values())
        if unknown >= 1 / 60:
            recorded[NOT_RECORDED] = unknown
        return {machine: round(minutes, 2) for machine, minutes in recorded.items()}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the running process ``pid`` so far (Linux ``/proc``; 0.0
    where unknown: the time is then counted when the process ends)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's ended and waited-for children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
