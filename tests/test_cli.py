"""The command line as users meet it: listings, one-line errors, the extract summary, the offline demo."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import featkit
from featkit.cli.app import app
from featkit.cli.app import main as featkit_main
from featkit.errors import UnknownNameError

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_models_lists_curated_backbones_with_default_tap_and_weights():
    result = run("models")
    assert result.exit_code == 0
    for name in ("alexnet", "vgg16_bn", "resnet152", "squeezenet1_1"):
        assert name in result.output
    assert "IMAGENET1K_V1" in result.output and "featkit models --all" in result.output


def test_taps_prints_every_tap_with_shape_dims_and_bytes():
    result = run("taps", "vgg16")
    assert result.exit_code == 0
    assert "fc7_pre" in result.output and "classifier.4" in result.output
    assert "512×7×7" in result.output and "25,088" in result.output and "16,384" in result.output  # fc7: 4096 × 4 B


def test_extract_prints_what_it_wrote(tiny_folder, tmp_path):
    result = run("extract", str(tiny_folder), "-o", str(tmp_path / "s"), "--model", "resnet18", "--layer", "layer3",
                 "--layer", "avgpool", "--pool", "avg", "--weights", "random", "--workers", "0", "-q")
    assert result.exit_code == 0, result.output
    assert "8 rows" in result.output and "features/layer3/part-*.npy  (8 × 256 float32)" in result.output
    store = featkit.open_features(tmp_path / "s")
    assert store.taps == ["layer3", "avgpool"] and store["avgpool"].shape == (8, 512)
    info = run("info", str(tmp_path / "s"))
    assert info.exit_code == 0 and "resnet18" in info.output and "2 classes" in info.output


def main(monkeypatch, *args: str) -> int:
    """Run the console entry point in this process, as ``featkit ARGS`` would; returns the exit code."""
    monkeypatch.setattr(sys, "argv", ["featkit", *args])
    monkeypatch.setenv("FEATKIT_DEBUG", "0")  # --debug sets it to 1; monkeypatch restores it afterwards
    with pytest.raises(SystemExit) as exited:
        featkit_main()
    return exited.value.code


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "vgg16", "--layer", "fc_7"],
         "error: Unknown tap 'fc_7' for vgg16. Did you mean 'fc7'? See: featkit taps vgg16"),
        (["--model", "resnet5"], "error: Unknown model 'resnet5'. Did you mean 'resnet50'?"),
        (["--weights", "missing.pth"],
         "error: Weights 'missing.pth' are neither 'imagenet', 'random' nor an existing file."),
    ],
)
def test_cli_errors_are_one_line_without_traceback(tiny_folder, tmp_path, args, message, monkeypatch, capsys):
    assert main(monkeypatch, "extract", str(tiny_folder), "-o", str(tmp_path / "s"), *args) == 1
    err = capsys.readouterr().err
    assert err.strip().startswith(message), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_debug_flag_lets_the_error_through_with_its_traceback(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["featkit", "--debug", "extract", str(tiny_folder), "-o", str(tmp_path / "s"),
                                      "--model", "resnet5"])
    monkeypatch.setenv("FEATKIT_DEBUG", "0")
    with pytest.raises(UnknownNameError, match="Unknown model 'resnet5'") as info:
        featkit_main()
    assert info.traceback  # raised, not printed: Python shows the traceback


def test_offline_imagenet_weights_fail_in_one_line_naming_the_fix(tiny_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # follow TORCH_HOME, as a new process would
    assert main(monkeypatch, "extract", str(tiny_folder), "-o", str(tmp_path / "s"), "--model", "squeezenet1_1",
                "--offline") == 1
    line = capsys.readouterr().err.strip()
    assert "not cached" in line and "--weights random" in line and len(line.splitlines()) == 1


def test_demo_runs_offline_on_the_embedded_digits(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_hub"))  # no cached weights, like a fresh machine
    result = run("demo", "-o", str(tmp_path / "demo"), "--model", "resnet18", "--per-class", "3")
    assert result.exit_code == 0, result.output
    assert "using --weights random instead" in result.output
    assert "30 rows" in result.output and "nearest-centroid accuracy" in result.output
    store = featkit.open_features(tmp_path / "demo" / "store")
    assert sorted(store.rows["label"].unique()) == [str(d) for d in range(10)]


def test_help_answers_without_importing_torch():
    code = ("import sys, featkit, featkit.cli.app; "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]"
    assert subprocess.run([sys.executable, "-m", "featkit", "--help"], capture_output=True).returncode == 0


def test_featkit_extract_stays_the_function_after_any_submodule_import():
    import importlib

    importlib.import_module("featkit.extraction.engine")
    assert callable(featkit.extract) and featkit.extract.__module__ == "featkit.api"


def test_version_flags_and_choice_errors_read_as_a_user_expects(monkeypatch, capsys):
    assert main(monkeypatch, "--version") == 0
    assert capsys.readouterr().out.strip() == f"featkit {featkit.__version__}"
    assert main(monkeypatch, "extract", "x", "-o", "y", "--pool", "average") == 2
    err = capsys.readouterr().err
    assert "'average' is not one of 'none', 'avg'" in err and "Value error" not in err
    monkeypatch.setenv("COLUMNS", "200")
    assert main(monkeypatch, "extract", "--help") == 0
    flag_lines = [ln for ln in capsys.readouterr().out.splitlines() if "--l2 " in ln or "--overwrite " in ln]
    assert len(flag_lines) == 2 and not any("<bool>" in ln for ln in flag_lines)


def test_ctrl_c_during_extraction_is_one_line_saying_what_is_saved(tiny_folder, tmp_path, monkeypatch, capsys):
    from featkit.extraction.embed import Embedder

    real = Embedder.batches

    def interrupted(self, *args, **kwargs):
        for i, batch in enumerate(real(self, *args, **kwargs)):
            if i == 3:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(Embedder, "batches", interrupted)
    code = main(monkeypatch, "extract", str(tiny_folder), "-o", str(tmp_path / "s"), "--model", "squeezenet1_1",
                "--weights", "random", "--batch-size", "2", "--shard-rows", "2", "-q")
    assert code == 130
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Interrupted: ") and "rerun the same command to resume" in lines[0]
    assert f"holds {len(featkit.open_features(tmp_path / 's')):,} rows" in lines[0]


def test_a_spatial_tap_stored_flattened_says_what_it_costs(tiny_folder, tmp_path):
    result = run("extract", str(tiny_folder), "-o", str(tmp_path / "s"), "--model", "squeezenet1_1", "--weights",
                 "random", "--workers", "0", "-q")  # the default tap, fire9, is a 512×13×13 map
    assert result.exit_code == 0, result.output
    assert ("note: fire9 (a C×H×W map, 512×13×13) is stored flattened: 86,528 values per image (338 KiB as "
            "float32); --pool avg stores 512.") in result.output
    pooled = run("extract", str(tiny_folder), "-o", str(tmp_path / "p"), "--model", "squeezenet1_1", "--weights",
                 "random", "--workers", "0", "--pool", "avg", "-q")
    assert "stored flattened" not in pooled.output


def test_threads_are_chosen_once_from_the_option_the_variable_or_the_load(monkeypatch):
    from featkit import _device

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(_device, "_threads_set", False)
        monkeypatch.setenv("FEATKIT_NUM_THREADS", "2")
        assert _device.cpu_threads() == 2
        monkeypatch.setenv("FEATKIT_NUM_THREADS", "5")
        assert _device.cpu_threads() == 2  # decided once per process
        torch.set_num_threads(2)
        monkeypatch.setattr(_device, "_threads_set", False)
        monkeypatch.delenv("FEATKIT_NUM_THREADS")
        monkeypatch.setattr(_device, "_running_elsewhere", lambda: 7)  # a busy machine
        assert _device.cpu_threads() == 1
        monkeypatch.setattr(_device, "_threads_set", False)
        monkeypatch.setenv("FEATKIT_NUM_THREADS", "many")
        with pytest.raises(featkit.FeatkitError, match="FEATKIT_NUM_THREADS must be a whole number"):
            _device.cpu_threads()
        monkeypatch.setenv("FEATKIT_NUM_THREADS", "0")
        assert run("--threads", "3", "models").exit_code == 0 and os.environ["FEATKIT_NUM_THREADS"] == "3"
    finally:
        torch.set_num_threads(before)
