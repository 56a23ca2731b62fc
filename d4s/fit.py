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

import re
import sys

from jsonargparse import ArgumentError
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
        ValueError: a config value the parser or the stage refuses, in one line (:func:`parser_error_line`; the
            stage's own message), not the parser's dump of the whole config.
    """
    try:
        cli = FitCLI(
            Diff4SplatModule,
            ClipDataModule,
            subclass_mode_model=True,
            args=argv,
            run=False,
            parser_kwargs={"prog": "python -m d4s.fit", "description": __doc__, "exit_on_error": False},
            save_config_kwargs={"overwrite": True},
        )
    except ArgumentError as error:
        raise ValueError(parser_error_line(str(error))) from error
    except ValueError as error:  # jsonargparse wraps the error a stage raised while it was being built
        raise ValueError(str(root_cause(error))) from error
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=cli.config["ckpt_path"])
    return cli


_PARSER_KEY = re.compile(r'^\s*Parser key "([^"]+)":\s*(.*)$')
_PARSER_NOISE = (  # jsonargparse's account of the alternatives it tried, around the one error that matters
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value",
    "- Problem with given class_path",
    "- Expected a <class 'NoneType'>",
)
_PARSER_REWORDING = (  # jsonargparse's phrasing -> the one d4s uses everywhere (d4s.utils.config)
    (re.compile(r"^Expected a typing\.Literal\[(.*)\]\. Got value: (.*)$"), r"'\2' is not one of [\1]"),
    (re.compile(r"^Expected a <class '(\w+)'>\. Got value: (.*)$"), r"expected \1, got '\2'"),
    (re.compile(r"^Option '(.*)' is not accepted$"), r"unknown key '\1'"),
)


def parser_error_line(message: str) -> str:
    """One line from a jsonargparse error: the innermost key that failed, dotted (``model.recipe.dit``; the
    ``init_args`` level left out), and what is wrong with its value, e.g. ``model.recipe.dit: 'fulll' is not one of
    ['full', 'camera', 'lora', 'frozen']``. jsonargparse reports every alternative it tried, nested by
    indentation; the first line that is neither a key nor part of that account is the error."""
    keys: list[tuple[int, str]] = []  # (indentation, key) of the keys enclosing the current line
    for line in message.splitlines():
        indent = len(line) - len(line.lstrip())
        keys = [(depth, key) for depth, key in keys if depth < indent]
        text = line.strip()
        key = _PARSER_KEY.match(line)
        if key:
            keys.append((indent, key.group(1)))
            text = key.group(2)
        if not text or text.startswith(_PARSER_NOISE):
            continue
        for pattern, wording in _PARSER_REWORDING:
            text = pattern.sub(wording, text)
        where = ".".join(key for _, key in keys)
        return f"{where}: {text}" if where else f"{text} (python -m d4s.fit --help lists the options)"
    return message.strip().splitlines()[0]


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
