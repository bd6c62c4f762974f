"""The registry and the `python -m dpfast.experiments` entry point."""
import pytest

from dpfast import experiments


def test_every_registered_experiment_has_a_run_function():
    for name in experiments.EXPERIMENTS:
        assert callable(experiments.load(name).run)


def test_unknown_experiment_is_rejected_with_the_choices():
    with pytest.raises(ValueError, match="gmm_1d"):
        experiments.load("nope")
    with pytest.raises(SystemExit):
        experiments.main(["nope", "-o", "x"])


def test_main_runs_an_experiment_into_the_output_folder(tmp_path, capsys):
    assert experiments.main(["gaussian", "-o", str(tmp_path), "--quick", "--seed", "1"]) == 0
    assert (tmp_path / "gaussian.json").is_file()
    assert "gaussian done" in capsys.readouterr().out


def test_medium_is_refused_for_experiments_without_that_size_and_with_quick(capsys):
    with pytest.raises(SystemExit):
        experiments.main(["gaussian", "--medium", "-o", "x"])
    assert "only images have a medium size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        experiments.main(["images", "--medium", "--quick", "-o", "x"])
    with pytest.raises(ValueError, match="only \\['images'\\] have a medium size, got 'pinwheel'"):
        experiments.run("pinwheel", "x", medium=True)
    with pytest.raises(ValueError, match="quick and medium exclude each other"):
        experiments.run("images", "x", quick=True, medium=True)
