"""`dpfast restore` / `dpfast traverse` end to end on a temporary folder of images.

The network is the built-in architecture with random weights (the CLI's machinery does
not depend on the weights), saved as a checkpoint and loaded through --model/--config.
"""
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from dpfast.cli import image_seed, main
from dpfast.guidance import beta_scaled_zeta
from dpfast.models.adm import ADMScoreModel

STEPS = "3"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "random-builtin.safetensors"
    save_file(ADMScoreModel("builtin-fmnist").unet.state_dict(), str(path))
    return path


@pytest.fixture
def image_folder(tmp_path):
    folder = tmp_path / "inputs"
    folder.mkdir()
    generator = np.random.default_rng(0)
    for index in range(4):
        pixels = generator.integers(0, 256, size=(32, 32), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{index}.png")
    return folder


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _restore(folder, out, checkpoint, *extra):
    return main(["restore", str(folder), "-o", str(out), "--model", str(checkpoint), "--config", "builtin-fmnist",
                 "--steps", STEPS, "--degrade", "--quiet", *extra])


def test_restore_writes_one_output_per_input_identical_across_batch_sizes(tmp_path, image_folder, checkpoint):
    assert _restore(image_folder, tmp_path / "b1", checkpoint, "--batch", "1", "--task", "sr") == 0
    assert _restore(image_folder, tmp_path / "b4", checkpoint, "--batch", "4", "--task", "sr") == 0
    names = sorted(p.name for p in (tmp_path / "b1").iterdir())
    assert names == [f"img{i}.png" for i in range(4)]
    for name in names:
        one, four = Image.open(tmp_path / "b1" / name), Image.open(tmp_path / "b4" / name)
        assert one.size == (32, 32) and one.mode == "L"
        assert np.array_equal(np.asarray(one), np.asarray(four)), name


def test_rerun_skips_finished_outputs_and_leaves_no_temporaries(tmp_path, image_folder, checkpoint, capsys):
    out = tmp_path / "out"
    assert _restore(image_folder, out, checkpoint, "--batch", "2") == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    (out / "img1.png").unlink()
    assert _restore(image_folder, out, checkpoint, "--batch", "2") == 0
    assert "restored 1 images" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert set(after) == set(before) and all(after[n] == before[n] for n in before if n != "img1.png")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_traverse_writes_a_strip(tmp_path, image_folder, checkpoint):
    grid = tmp_path / "grid.png"
    code = main(["traverse", str(image_folder / "img0.png"), "--lams", "0,0.5,1", "-o", str(grid), "--model",
                 str(checkpoint), "--config", "builtin-fmnist", "--steps", STEPS, "--degrade", "--task", "deblur",
                 "--quiet"])
    assert code == 0
    width, height = Image.open(grid).size
    assert width == 3 * 34 + 2 and height == 2 * 34 + 2  # rows: truth+measurement, then 3 λ values


@pytest.mark.parametrize(
    "make_input, extra, message",
    [
        (lambda d: d, ["--lam", "1.5"], r"--lam must lie in \[0.0, 1.0\], got 1.5"),
        (lambda d: d, ["--sigma-n", "-0.1"], r"--sigma-n must lie in \[0.0, inf\], got -0.1"),
        (lambda d: d, ["--zeta", "nan"], "--zeta must be finite, got nan"),
        (lambda d: d, ["--zeta", "big"], "--zeta must be a number, or LAM:VALUE pairs such as 0:320,1:160; got 'big'"),
        (lambda d: d, ["--zeta", "0:3,2:1"], r"--zeta's λ in '2:1' must lie in \[0.0, 1.0\], got 2.0"),
        (lambda d: d, ["--zeta", "0:3,1:-1"], r"--zeta's value at λ 1 must lie in \[0.0, inf\], got -1.0"),
        (lambda d: d, ["--zeta", "0.5:3,0.75:1", "--lam", "0"], r"--zeta's pairs cover λ in \[0.5, 0.75\]; --lam asks for 0$"),
        (lambda d: d, ["--zeta", "0:3,"], r"--zeta must be a number, .* got '0:3,' \(its part '' is not LAM:VALUE\)"),
        (lambda d: d, ["--steps", "0"], r"--steps must lie in \[1, inf\], got 0"),
        (lambda d: d, ["--steps", "1001", "--zeta-schedule", "beta"], r"--steps must be between 1 and the model's T = 1000, got 1001"),
        (lambda d: d, ["--threads", "0"], r"--threads must lie in \[1, inf\], got 0"),
        (lambda d: d / "missing.png", [], "does not exist"),
        (lambda d: (d / "empty").mkdir() or d / "empty", [], "holds no"),
        (lambda d: _write(d / "bad.png", b"not a png"), [], "cannot read image"),
        (lambda d: Image.new("L", (20, 20)).save(d / "small.png") or d / "small.png", [], r"has shape \(1, 20, 20\)"),
        (lambda d: d, ["--task", "deblur", "--blur-size", "4"], r"--blur-size must be odd .*got 4"),
        (lambda d: d, ["--task", "sr", "--factor", "0"], r"--factor must lie in \[1, inf\], got 0"),
        (lambda d: d, ["--task", "inpaint", "--box", "0"], r"--box must lie in \[1, inf\], got 0"),
    ],
    ids=["lam-out-of-range", "negative-sigma-n", "nan-zeta", "word-zeta", "zeta-lam-out-of-range", "negative-zeta-pair", "zeta-pairs-miss-lam", "zeta-trailing-comma", "zero-steps", "steps-above-T", "zero-threads", "missing-file", "empty-folder",
         "truncated-image", "wrong-size", "even-blur-size", "zero-factor", "zero-box"],
)
def test_bad_input_is_a_clean_error_and_writes_nothing(tmp_path, image_folder, checkpoint, make_input, extra, message, capsys):
    source = image_folder if extra else make_input(tmp_path)
    out = tmp_path / "out"
    code = _restore(source, out, checkpoint, *extra)
    error = capsys.readouterr().err
    assert code == 2, error
    assert re.search(message, error), error
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("command", ["restore", "traverse"])
def test_unwritable_output_is_a_clean_error_before_any_work(tmp_path, image_folder, checkpoint, command, capsys):
    blocker = _write(tmp_path / "a-file", b"x")  # a file where a folder would have to be: root cannot write there either
    out = blocker / "out" if command == "restore" else blocker / "grid.png"
    source = image_folder if command == "restore" else image_folder / "img0.png"
    options = ["--model", str(checkpoint), "--config", "builtin-fmnist", "--steps", STEPS, "--degrade", "--quiet"]
    code = main([command, str(source), "-o", str(out), *options])
    error = capsys.readouterr().err
    assert code == 2, error
    assert re.search(r"-o .*cannot be written: .*a-file' is a file", error), error
    assert blocker.read_bytes() == b"x"


def test_traverse_refuses_an_output_name_it_would_not_write(tmp_path, image_folder, checkpoint, capsys):
    code = main(["traverse", str(image_folder / "img0.png"), "-o", str(tmp_path / "strip.jpg"), "--model", str(checkpoint),
                 "--config", "builtin-fmnist", "--steps", STEPS, "--degrade", "--quiet"])
    error = capsys.readouterr().err
    assert code == 2 and "traverse writes a PNG, so its name must end in .png" in error, error
    assert not (tmp_path / "strip.jpg").exists() and not (tmp_path / "strip.png").exists()


def test_checkpoint_that_does_not_match_its_config_is_a_clean_error(tmp_path, image_folder, checkpoint, capsys):
    out = tmp_path / "out"
    code = main(["restore", str(image_folder), "-o", str(out), "--model", str(checkpoint), "--config",
                 "adm-imagenet256-uncond", "--steps", STEPS, "--degrade", "--quiet"])
    error = capsys.readouterr().err
    assert code == 2, error
    assert re.search(r"dpfast restore: error: .*(missing|unexpected|shape)", error), error
    assert not out.exists()


@pytest.mark.parametrize("flags, mode", [([], "auto"), (["--mode", "eager"], "eager")])
def test_the_mode_flag_reaches_the_sampler(checkpoint, flags, mode):
    """--mode's default is the sampler's "auto" (cudagraph on CUDA), not the Sampler class's own default."""
    from dpfast.cli import _load, _sampler, build_operator, build_parser

    args = build_parser().parse_args(["restore", "x.png", "-o", "out", "--model", str(checkpoint), "--config", "builtin-fmnist",
                                      "--device", "cpu", *flags])
    model = _load(args)
    sampler = _sampler(args, model, build_operator(args.task, tuple(model.image_shape), args))
    assert (sampler.mode, sampler.active_mode) == (mode, "eager")


@pytest.mark.parametrize("flags, guidance", [([], "dps"), (["--guidance", "x0"], "x0")])
def test_the_guidance_flag_reaches_the_sampler(checkpoint, flags, guidance):
    from dpfast.cli import _load, _sampler, build_operator, build_parser

    args = build_parser().parse_args(["traverse", "x.png", "-o", "strip.png", "--model", str(checkpoint), "--config",
                                      "builtin-fmnist", "--device", "cpu", *flags])
    model = _load(args)
    assert _sampler(args, model, build_operator(args.task, tuple(model.image_shape), args)).guidance == guidance


@pytest.mark.parametrize("flags, expected", [
    ([], lambda schedule, steps: {0.0: 1.0, 0.5: 1.0, 1.0: 1.0}),
    (["--zeta", "0:3,1:1"], lambda schedule, steps: {0.0: 3.0, 0.5: 2.0, 1.0: 1.0}),
    (["--zeta", "0:40,1:80", "--zeta-schedule", "beta"],
     lambda schedule, steps: {lam: beta_scaled_zeta(40.0 + 40.0 * lam, schedule, steps)(lam) for lam in (0.0, 0.5, 1.0)}),
], ids=["default", "pairs", "beta-pairs"])
def test_the_zeta_flags_reach_the_sampler(checkpoint, flags, expected):
    """--zeta's λ:value pairs are interpolated in λ; --zeta-schedule beta makes them the β-scaled step's scale c."""
    from dpfast.cli import _load, _sampler, build_operator, build_parser
    from dpfast.guidance import zeta_table

    args = build_parser().parse_args(["traverse", "x.png", "-o", "strip.png", "--model", str(checkpoint), "--config",
                                      "builtin-fmnist", "--device", "cpu", "--steps", "20", *flags])
    model = _load(args)
    sampler = _sampler(args, model, build_operator(args.task, tuple(model.image_shape), args))
    table = zeta_table(sampler.zeta, [0.0, 0.5, 1.0], 20)
    for column, (lam, zeta) in enumerate(expected(model.schedule, 20).items()):
        # table rows run from the last step to the first; a per-step sequence is in execution order
        np.testing.assert_allclose(table[::-1, column], np.broadcast_to(zeta, (20,)), rtol=1e-12, err_msg=f"λ {lam}")


def test_traverse_checks_that_the_zeta_pairs_cover_its_lams(tmp_path, image_folder, checkpoint, capsys):
    code = main(["traverse", str(image_folder / "img0.png"), "-o", str(tmp_path / "strip.png"), "--model", str(checkpoint),
                 "--config", "builtin-fmnist", "--steps", STEPS, "--degrade", "--quiet", "--zeta", "0:3,0.5:1", "--lams", "0,0.5,1"])
    error = capsys.readouterr().err
    assert code == 2 and "--zeta's pairs cover λ in [0, 0.5]; --lams asks for 1" in error, error
    assert not (tmp_path / "strip.png").exists()


def test_an_unknown_guidance_flag_names_the_choices(capsys):
    from dpfast.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["restore", "x.png", "-o", "out", "--guidance", "none"])
    assert "argument --guidance: invalid choice: 'none' (choose from" in capsys.readouterr().err


def test_image_seed_depends_on_name_and_base_seed_only():
    assert image_seed("a.png", 0) == image_seed("a.png", 0)
    assert image_seed("a.png", 0) != image_seed("b.png", 0) != image_seed("a.png", 1)
    assert 0 <= image_seed("a.png", 0) < 2**63


def test_reproduce_is_wired_to_the_experiments(capsys):
    import pytest as _pytest

    with _pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "--help"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "gmm_1d" in printed and printed.startswith("usage: dpfast reproduce ")


def test_restore_with_the_builtin_model(tmp_path, image_folder):
    out = tmp_path / "out"
    code = main(["restore", str(image_folder), "-o", str(out), "--model", "builtin", "--steps", STEPS, "--degrade",
                 "--task", "denoise", "--sigma-n", "0.2", "--quiet", "--batch", "4"])
    assert code == 0
    images = [np.asarray(Image.open(path)) for path in sorted(out.iterdir())]
    assert len(images) == 4 and all(image.shape == (32, 32) for image in images)


def test_threads_sets_torchs_thread_count(tmp_path, image_folder, checkpoint, monkeypatch):
    asked = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)  # the test process keeps its own count
    assert _restore(image_folder, tmp_path / "out", checkpoint, "--threads", "1") == 0
    assert asked == [1]


def test_dtype_auto_reaches_the_sampler(tmp_path, image_folder, checkpoint, monkeypatch):
    import dpfast.sampler as sampler_module

    chosen = []
    real = sampler_module._resolve_network_dtype
    monkeypatch.setattr(sampler_module, "_resolve_network_dtype",
                        lambda dtype, device: chosen.append(dtype) or real(dtype, device))
    assert _restore(image_folder, tmp_path / "out", checkpoint, "--dtype", "auto") == 0
    assert chosen == ["auto"]
