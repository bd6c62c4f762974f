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


def test_a_device_is_refused_for_cpu_only_experiments_and_a_missing_cuda(capsys, monkeypatch):
    with pytest.raises(ValueError, match="device='cuda': only \\['images'\\] run off the CPU, got 'gaussian'"):
        experiments.run("gaussian", "x", device="cuda")
    with pytest.raises(SystemExit):
        experiments.main(["pinwheel", "--device", "cuda", "-o", "x"])
    assert "--device cuda: only images run off the CPU" in capsys.readouterr().err
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit):
        experiments.main(["images", "--device", "cuda", "-o", "x"])
    assert "CUDA is not available here" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        experiments.main(["images", "--device", "gpu0", "-o", "x"])
    assert "'gpu0' is not a torch device" in capsys.readouterr().err


def test_the_cpu_device_is_the_default_and_accepted_by_every_experiment(tmp_path):
    results = experiments.run("gaussian", tmp_path, quick=True, device="cpu")
    assert "--device" not in results["meta"]["command"] and results["meta"]["device"].startswith("CPU")


def test_status_is_for_images_only_and_computes_nothing(tmp_path, capsys):
    with pytest.raises(SystemExit):
        experiments.main(["gmm_1d", "--status", "-o", str(tmp_path)])
    assert "--status: only images keeps a run's state, got gmm_1d" in capsys.readouterr().err
    assert experiments.main(["images", "--status", "-o", str(tmp_path)]) == 0
    assert "no images run in" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--markdown", "--plot"])
def test_status_options_go_with_status_only(tmp_path, capsys, flag):
    with pytest.raises(SystemExit):
        experiments.main(["images", flag, "-o", str(tmp_path)])
    assert f"{flag} goes with --status" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_named_experiments_run_in_registry_order_so_seed_spread_follows_images(monkeypatch, tmp_path):
    ran = []
    monkeypatch.setattr(experiments, "run", lambda name, *args, **kwargs: ran.append(name))
    assert experiments.main(["seed_spread", "images", "gaussian", "images", "-o", str(tmp_path), "--quick"]) == 0
    assert ran == ["gaussian", "images", "seed_spread"]


def test_seed_spread_without_an_images_run_in_out_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        experiments.main(["seed_spread", "-o", str(tmp_path)])
    assert f"seed_spread reruns the points of an images run in -o {tmp_path}, and there is none" in capsys.readouterr().err
