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

from lightning.pytorch.cli import LightningCLI

from d4s.data.datamodule import ClipDataModule
from d4s.stages.base import Diff4SplatModule


class FitCLI(LightningCLI):
    """LightningCLI over the stage modules and :class:`ClipDataModule`, plus ``--ckpt_path``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="resume this run exactly")
        parser.set_defaults({"trainer.plugins": [{"class_path": "d4s.stages.checkpoint.AtomicCheckpointIO"}]})


def main(argv: list[str] | None = None) -> FitCLI:
    """Parse ``argv`` (default: the command line) and train; ``--print_config`` prints the config and exits."""
    cli = FitCLI(
        Diff4SplatModule,
        ClipDataModule,
        subclass_mode_model=True,
        args=argv,
        run=False,
        parser_kwargs={"prog": "python -m d4s.fit", "description": __doc__},
        save_config_kwargs={"overwrite": True},
    )
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=cli.config["ckpt_path"])
    return cli


if __name__ == "__main__":
    main()
