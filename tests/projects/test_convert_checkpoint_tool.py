"""tools/convert_checkpoint.py's help for users: converter names from a source or project
alone, --config found from the repository root, and a short report that points to the config
of the right variant when a checkpoint does not fit."""

import pickle
from pathlib import Path

import pytest
import torch
from detectron2.config import LazyConfig, instantiate

from tests.tool_runs import load_script

from .key_lists import read_key_list, synthetic_state_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
DETR_SHAPES = "projects/detr/configs/detr_shapes.py"


def load_tool():
    """``tools/convert_checkpoint.py`` as a module."""
    return load_script("tools/convert_checkpoint.py")


def test_from_a_source_alone_lists_its_converters(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        load_tool().main(["--from", "detrex", "--config", DETR_SHAPES, "in.pth", "out.pth"])
    assert info.value.code == 2
    error = capsys.readouterr().err
    for name in ("align_detr.detrex", "deformable_detr.detrex", "detr.detrex", "dino.detrex"):
        assert name in error
    assert "detr.facebookresearch" in error  # among all registered, named as such
    assert "'<project>.<source>'" in error


def test_list_explains_the_names(capsys):
    assert load_tool().main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "<project>.<source>" in out
    assert "dino.detrex:" in out and "deformable_detr.detrex:" in out


def test_config_is_found_from_the_repository_root(tmp_path, monkeypatch):
    model = instantiate(LazyConfig.load(str(REPO_ROOT / DETR_SHAPES)).model)
    source = tmp_path / "detrex.pth"
    torch.save({"model": model.state_dict()}, source)
    monkeypatch.chdir(tmp_path)  # the relative config path is not under the cwd
    main = load_tool().main
    assert main(["--from", "detr.detrex", "--config", DETR_SHAPES, str(source), "out.pth"]) == 0
    assert (tmp_path / "out.pth").is_file()

    missing = "projects/detr/configs/no_such_config.py"
    with pytest.raises(SystemExit) as info:
        main(["--from", "detr.detrex", "--config", missing, str(source), "out2.pth"])
    message = str(info.value.code)
    assert str(tmp_path / missing) in message and str(REPO_ROOT / missing) in message


def test_checkpoint_of_another_variant_gets_a_short_report_and_the_right_config(tmp_path, capsys):
    """Two-stage Deformable DETR weights with the plain config: 72 unused keys (the
    decoder's own heads), 3 missing; the report names the two-stage config."""
    source = synthetic_state_dict(read_key_list("detrex_deformable_detr_r50_two_stage.txt"))
    path = tmp_path / "two_stage.pth"
    torch.save({"model": source}, path)
    output = tmp_path / "out.pth"
    plain = "projects/deformable_detr/configs/deformable_detr_r50_50ep.py"
    main = load_tool().main
    assert (
        main(["--from", "deformable_detr.detrex", "--config", plain, str(path), str(output)]) == 1
    )
    assert not output.exists()
    out = capsys.readouterr().out
    assert "renamed to" not in out  # identity renames say nothing
    assert "unused source keys: 72" in out and "... and 67 more" in out
    assert "missing target keys: 3" in out
    lines = out.splitlines()
    assert len(lines) < 40, out
    suggestion = "--config projects/deformable_detr/configs/deformable_detr_r50_two_stage_50ep.py"
    first = next(index for index, line in enumerate(lines) if "fit this checkpoint better" in line)
    assert lines[first + 1].strip().startswith(suggestion)
    assert "(fits exactly)" in lines[first + 1]


def test_a_pickle_of_numpy_arrays_converts_with_unsafe_pickle_only(tmp_path):
    """A .pkl of numpy arrays (detectron2's model-zoo format): torch.load cannot read it even
    with --unsafe-pickle; it is read as detectron2 reads it, and only when trusted."""
    model = instantiate(LazyConfig.load(str(REPO_ROOT / DETR_SHAPES)).model)
    state = {key: value.numpy() for key, value in model.state_dict().items()}
    source = tmp_path / "detrex.pkl"
    source.write_bytes(pickle.dumps({"model": state, "__author__": "someone"}))
    main = load_tool().main
    args = ["--from", "detr.detrex", "--config", DETR_SHAPES, str(source)]
    with pytest.raises(SystemExit, match="is a pickle file, .* rerun with --unsafe-pickle"):
        main([*args, str(tmp_path / "refused.pth")])
    assert main([*args, str(tmp_path / "out.pth"), "--unsafe-pickle"]) == 0
    converted = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    assert converted.keys() == state.keys()
    assert all(torch.equal(converted[key], torch.from_numpy(state[key])) for key in state)


def test_from_alone_lists_the_converters_it_may_mean(capsys):
    """README: `--from detrex` lists the detrex ones (it was a usage error)."""
    main = load_tool().main
    assert main(["--from", "detrex"]) == 0
    out = capsys.readouterr().out
    assert "dino.detrex:" in out and "deformable_detr.detrex:" in out
    assert "facebookresearch" not in out
    with pytest.raises(SystemExit) as info:
        main(["--from", "no_such_codebase_at_all"])
    assert info.value.code == 2
    assert "error: --from 'no_such_codebase_at_all': no converter of that project or source" in (
        capsys.readouterr().err
    )


def test_a_checkpoint_saved_from_ddp_converts(tmp_path, capsys):
    """'module.' keys (saved from a DistributedDataParallel model) used to match nothing and
    make the tool recommend an unrelated config."""
    model = instantiate(LazyConfig.load(str(REPO_ROOT / DETR_SHAPES)).model)
    source = tmp_path / "ddp.pth"
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, source)
    output = tmp_path / "out.pth"
    args = ["--from", "detr.detrex", "--config", DETR_SHAPES, str(source), str(output)]
    assert load_tool().main(args) == 0
    assert "removing the 'module.' prefix" in capsys.readouterr().out
    converted = torch.load(output, weights_only=True)["model"]
    assert converted.keys() == model.state_dict().keys()


def test_unreadable_inputs_are_named_as_such(tmp_path):
    """A missing or truncated file was told to rerun with --unsafe-pickle, which fixes
    neither."""
    main = load_tool().main
    args = ["--from", "detr.detrex", "--config", DETR_SHAPES]
    with pytest.raises(SystemExit, match="got missing path") as info:
        main([*args, str(tmp_path / "missing.pth"), str(tmp_path / "out.pth")])
    assert "--unsafe-pickle" not in str(info.value.code)
    model = instantiate(LazyConfig.load(str(REPO_ROOT / DETR_SHAPES)).model)
    whole = tmp_path / "whole.pth"
    torch.save({"model": model.state_dict()}, whole)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(whole.read_bytes()[:5000])
    with pytest.raises(SystemExit, match="probably truncated") as info:
        main([*args, str(cut), str(tmp_path / "out.pth")])
    assert "--unsafe-pickle" not in str(info.value.code)


def test_a_file_of_another_codebase_gets_the_converter_that_fits(tmp_path, capsys):
    """A facebookresearch/detr checkpoint given to detr.detrex: the report names
    detr.facebookresearch (it used to suggest detr_shapes.py, which matched 1 key)."""
    source = synthetic_state_dict(read_key_list("facebookresearch_detr_resnet50.txt"))
    path = tmp_path / "detr-r50.pth"
    torch.save({"model": source}, path)
    config = "projects/detr/configs/detr_r50_500ep.py"
    args = ["--from", "detr.detrex", "--config", config, str(path), str(tmp_path / "out.pth")]
    assert load_tool().main(args) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    first = next(i for i, line in enumerate(lines) if "converters of projects/detr" in line)
    assert lines[first + 1].strip() == "--from detr.facebookresearch  (fits exactly)"
    assert "detr_shapes.py" not in out
