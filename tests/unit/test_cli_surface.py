"""The command line's surface: help on every option, and the pure parts of arrays and views."""

import pytest
import typer

from gpuq.cli.app import app
from gpuq.cli.queue_view import array_label
from gpuq.daemon.arrays import parse_array, substitute
from gpuq.errors import InvalidInput


def test_every_option_has_help():
    import click

    group = typer.main.get_command(app)
    missing = []
    for name, cmd in group.commands.items():
        if name == "sim":  # registered from the simulator's module, checked there
            continue
        assert cmd.help, name
        for p in cmd.params:
            if isinstance(p, click.Option) and not p.help:
                missing.append(f"{name} {p.name}")
    assert missing == []


@pytest.mark.parametrize("text, indices, limit", [
    ("0-99%8", list(range(100)), 8), ("3", [3], None), ("1,3,5", [1, 3, 5], None), ("0-10:5", [0, 5, 10], None),
])
def test_array_specs(text, indices, limit):
    assert parse_array(text) == (indices, limit)


@pytest.mark.parametrize("text", ["", "5-1", "a-b", "0-9%0", "0-9%x", "1,1", "0-20000"])
def test_bad_array_specs_are_one_sentence(text):
    with pytest.raises(InvalidInput):
        parse_array(text)


def test_from_file_arrays_and_placeholders():
    assert parse_array("%4", commands=3) == ([0, 1, 2], 4)
    with pytest.raises(InvalidInput):
        parse_array("0-5", commands=3)
    assert substitute(["train.py", "--seed", "{}", "out-{}.txt"], 7) == ["train.py", "--seed", "7", "out-7.txt"]


def test_array_label():
    assert array_label({"array_id": 17, "limit": 8}, list(range(100))) == "17_[0-99%8]"
    assert array_label({"array_id": 17}, [1, 3, 4, 5]) == "17_[1,3-5]"
