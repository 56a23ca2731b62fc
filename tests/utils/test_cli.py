"""Argument helpers of the command-line tools."""

import pytest

from d4s.utils.cli import parse_size, parse_trajectory, run_cli


def test_sizes():
    assert parse_size("512") == (512, 512)
    assert parse_size("480x720") == (480, 720)
    assert parse_size("64X32") == (64, 32)
    for bad in ("", "0", "12x", "axb", "1x2x3", "-5"):
        with pytest.raises(ValueError, match="resolution"):
            parse_size(bad)


def test_trajectory_names_and_files(tmp_path):
    assert parse_trajectory("spiral") == ("spiral", None)
    name, path = parse_trajectory("missing/cams.json")  # a camera file by its suffix, found or not (loading says)
    assert name == "from_file" and str(path) == "missing/cams.json"
    existing = tmp_path / "path_without_suffix"
    existing.write_text("x")
    assert parse_trajectory(str(existing)) == ("from_file", existing)
    assert parse_trajectory(str(tmp_path / "re10k.txt"))[0] == "from_file"
    with pytest.raises(ValueError, match="unknown name 'from_file'"):
        parse_trajectory("from_file")
    with pytest.raises(ValueError, match="spiral, forward, backward, upward, downward, orbit"):
        parse_trajectory("zoom")


def test_run_cli_turns_bad_input_into_one_line(capsys):
    def failing(argv):
        raise ValueError("first line\nsecond line")

    assert run_cli(failing, []) == 2
    assert capsys.readouterr().err == "error: first line\n"
    assert run_cli(lambda argv: 0, []) == 0
