"""Train a stage: ``python -m d4s.fit --config configs/stage1.yaml`` (LightningCLI; ``--help`` lists every option).

A stage config holds ``trainer``, ``model`` (a stage class from :mod:`d4s.stages` and its arguments) and ``data``
(:class:`d4s.data.ClipDataModule` arguments, or the path of a data YAML such as ``configs/data/stage1.yaml``).
Any value can be overridden on the command line (``--trainer.max_steps=10``, ``--model.init_args.recipe.dit=lora``).

Hand-off and resume:

- ``--model.init_args.init_from=stage1/last.ckpt`` (or ``init_from:`` in the YAML) starts a stage from the previous
  stage's weights, with a fresh optimiser, schedule and step count;
- ``--ckpt_path=outputs/stage1/checkpoints/last.ckpt`` resumes a killed run exactly: step, optimiser, schedule,
  EMA. Checkpoints are written atomically (:class:`d4s.stages.checkpoint.AtomicCheckpointIO`).
"""

from __future__ import annotations

import sys

from lightning.pytorch.cli import LightningCLI

from d4s.data.datamodule import ClipDataModule
from d4s.stages.base import Diff4SplatModule
from d4s.utils.cli import run_cli


class FitCLI(LightningCLI):
    """LightningCLI over the stage modules and :class:`ClipDataModule`, plus ``--ckpt_path``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="resume this run exactly")
        parser.set_defaults({"trainer.plugins": [{"class_path": "d4s.stages.checkpoint.AtomicCheckpointIO"}]})


def main(argv: list[str] | None = None) -> FitCLI:
    """Parse ``argv`` (default: the command line) and train; ``--print_config`` prints the config and exits.

    Raises:
        ValueError: a config value the stage refuses (its own message, not the parser's dump of the whole config).
    """
    try:
        cli = FitCLI(
            Diff4SplatModule,
            ClipDataModule,
            subclass_mode_model=True,
            args=argv,
            run=False,
            parser_kwargs={"prog": "python -m d4s.fit", "description": __doc__},
            save_config_kwargs={"overwrite": True},
        )
    except ValueError as error:  # jsonargparse wraps the error a stage raised while it was being built
        raise ValueError(str(root_cause(error))) from error
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=cli.config["ckpt_path"])
    return cli


def root_cause(error: BaseException) -> BaseException:
    """The first exception of the chain that led to ``error``."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ if error.__cause__ is not None else error.__context__
    return error


def command(argv: list[str] | None = None) -> int:
    """:func:`main` for the command line: exit status 0 once trained."""
    main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(command))
