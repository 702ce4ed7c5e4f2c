"""detr_ext.utils: atomic writes (a reader never sees a partial file), the tools' integer
argument type, and strict-JSON values."""

from __future__ import annotations

import argparse
import json
import math
import os
import stat

import pytest

from detr_ext.utils import atomic_write, atomic_write_json
from detr_ext.utils.cli import int_at_least
from detr_ext.utils.json_ready import json_ready


def test_atomic_write_replaces_the_file_readable_by_others(tmp_path):
    path = tmp_path / "result.bin"
    path.write_bytes(b"old")
    atomic_write(path, lambda file: file.write(b"new"))
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # not mkstemp's 0600
    assert sorted(os.listdir(tmp_path)) == ["result.bin"]  # no temporary file left
    atomic_write(tmp_path / "text.txt", lambda file: file.write("é"), mode="w")
    assert (tmp_path / "text.txt").read_text() == "é"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model_final.pth"
    path.write_bytes(b"good checkpoint")

    def fail(file):
        file.write(b"half a checkpo")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_bytes() == b"good checkpoint"
    assert sorted(os.listdir(tmp_path)) == ["model_final.pth"]
    with pytest.raises(KeyboardInterrupt):  # an interrupted run cleans up too
        atomic_write(path, lambda file: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert sorted(os.listdir(tmp_path)) == ["model_final.pth"]


def test_atomic_write_refuses_other_modes(tmp_path):
    with pytest.raises(ValueError, match="expected mode 'wb' or 'w', got 'a'"):
        atomic_write(tmp_path / "x", lambda file: None, mode="a")
    assert os.listdir(tmp_path) == []


def test_atomic_write_json_round_trips(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"ap": 41.5, "ids": [1, 2]}, indent=1)
    assert json.loads((tmp_path / "a.json").read_text()) == {"ap": 41.5, "ids": [1, 2]}
    assert "\n " in (tmp_path / "a.json").read_text()  # dumps options reach json.dumps


@pytest.mark.parametrize("minimum", [0, 1])
def test_int_at_least(minimum, capsys):
    parse = int_at_least(minimum)
    assert parse(str(minimum)) == minimum and parse("12") == 12
    for text in (str(minimum - 1), "1.5", "two", ""):
        with pytest.raises(argparse.ArgumentTypeError, match=f"integer >= {minimum}, got"):
            parse(text)
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--repeat", type=parse)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--repeat", str(minimum - 1)])
    assert info.value.code == 2
    assert f"--repeat: expected an integer >= {minimum}" in capsys.readouterr().err


def test_json_ready_makes_strict_json():
    value = {"AP": math.nan, 3: (1.0, math.inf, -math.inf), "nested": [{"x": 2.5}], "s": "NaN"}
    ready = json_ready(value)
    assert ready == {"AP": None, "3": [1.0, None, None], "nested": [{"x": 2.5}], "s": "NaN"}
    json.dumps(ready, allow_nan=False)  # a strict writer accepts it
    assert json_ready(7) == 7 and json_ready(None) is None
