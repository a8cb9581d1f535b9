"""Run ``aiokd train`` and kill the process with SIGKILL at one chosen point, as a power cut would
(or send it SIGINT or SIGTERM there).

    python tests/crash_at.py POINT STAGE UPDATE -- TRAIN_ARGS...

``POINT`` is where the process dies, at stage ``STAGE``:

* ``step``: after the forward and backward pass of update ``UPDATE``, before Adam's step;
* ``sigint``, ``sigterm``: there the process gets that signal instead, and lives on (Ctrl-C or
  a scheduler's stop: the run saves its checkpoint after the update and ends);
* ``validate``: during the validation after update ``UPDATE``, once its first batch is done;
* ``save``: while writing the ``last`` checkpoint of update ``UPDATE``: half of the file is on
  disk under its temporary name when the process dies;
* ``model``: while writing the final ``model.safetensors`` (``STAGE`` and ``UPDATE`` unused).

The product code runs unchanged; only these points are wrapped.  If the point is never reached the
run ends normally, which the caller sees as an exit status other than -9.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import aiokd.train.loop
import aiokd.train.validation
from aiokd.cli import main


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str, stage: int, update: int) -> None:
    """Wrap the function of ``aiokd.train.loop`` where ``point`` lies."""
    Stage = aiokd.train.loop.Stage
    armed = {"write": False, "validation": False}
    real_replace = os.replace

    def replace_half_written(source, target):
        if armed["write"]:
            data = Path(source).read_bytes()
            Path(source).write_bytes(data[:len(data) // 2])
            die()
        real_replace(source, target)

    os.replace = replace_half_written

    if point in ("step", "sigint", "sigterm"):
        real_step = Stage.step

        def step(self, total_tokens):
            if self.stage == stage and self.state.update + 1 == update:
                if point == "step":
                    die()
                os.kill(os.getpid(), signal.SIGINT if point == "sigint" else signal.SIGTERM)
            real_step(self, total_tokens)

        Stage.step = step
    elif point == "validate":
        real_validate, real_nll = Stage._validate, aiokd.train.validation.validation_nll

        def _validate(self):
            armed["validation"] = self.stage == stage and self.state.update == update
            real_validate(self)

        def validation_nll(*args, **kwargs):
            result = real_nll(*args, **kwargs)
            if armed["validation"]:  # the first batch is done, the others are not
                die()
            return result

        Stage._validate = _validate
        aiokd.train.validation.validation_nll = validation_nll
    elif point == "save":
        real_save = Stage.save

        def save(self, path, with_optimizer=True):
            armed["write"] = (self.stage == stage and self.state.update == update
                              and path == self.run.last(stage))
            real_save(self, path, with_optimizer)

        Stage.save = save
    elif point == "model":
        real_save_model_dir = aiokd.train.loop.save_model_dir

        def save_model_dir(*args, **kwargs):
            armed["write"] = True
            real_save_model_dir(*args, **kwargs)

        aiokd.train.loop.save_model_dir = save_model_dir
    else:
        raise SystemExit(f"unknown point {point!r}")


if __name__ == "__main__":
    point, stage, update, separator, *train_args = sys.argv[1:]
    assert separator == "--", "usage: crash_at.py POINT STAGE UPDATE -- TRAIN_ARGS..."
    install(point, int(stage), int(update))
    main(["train", *train_args])
