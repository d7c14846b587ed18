"""`hsemo-jax evaluate` and `hsemo-jax sweep` glue: parse, run, print, write."""
import argparse
import csv
import importlib
import re

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from hsemo_jax import metrics
from hsemo_jax.errors import InputError
from hsemo_jax.postprocess import abaw_io, smooth


def run_cmd(module, argv):
    mod = importlib.import_module(module)
    parser = argparse.ArgumentParser()
    mod.add_arguments(parser)
    return mod.run(parser.parse_args(argv))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("abaw")
    rng = np.random.default_rng(0)
    vids = np.repeat(["vidA", "vidB_left", "vidC"], [60, 1, 90])
    frames = np.concatenate([np.arange(1, 61), [5], np.arange(1, 91) * 2])
    n = len(vids)
    images = [f"{v}/{f:05d}.jpg" for v, f in zip(vids, frames)]
    va = rng.uniform(-1, 1, (n, 2)).round(3)
    va[::6] = -5
    expr = rng.integers(0, 8, n)
    expr[::3] = -1
    aus = (rng.random((n, 12)) < 0.4).astype(int)
    aus[::4] = -1
    lines = ["image,Valence,Arousal,Expression,AU1,AU2,AU4,AU6,AU7,AU10,AU12,AU15,AU23,AU24,AU25,AU26"]
    lines += [",".join([im, str(v), str(a), str(e), *map(str, au)]) for im, (v, a), e, au in zip(images, va, expr, aus)]
    (d / "gt.txt").write_text("\n".join(lines) + "\n")
    p_va = np.clip(va + rng.normal(size=va.shape) * 0.3, -1, 1).astype(np.float32)
    p_ex = rng.dirichlet(np.ones(8), n).astype(np.float32)
    p_au = np.clip(aus * 0.3 + rng.random((n, 12)) * 0.7, 0, 1).astype(np.float32)
    abaw_io.write_mtl_scores(str(d / "pred.txt"), images, p_va, p_ex, p_au)
    q_ex = rng.dirichlet(np.ones(8), n).astype(np.float32)
    abaw_io.write_mtl_scores(str(d / "pred_b.txt"), images, -p_va, q_ex, 1 - p_au)
    return d


def numbers(out, name):
    return float(re.search(rf"{name} (-?[0-9.]+)", out).group(1))


def test_evaluate_prints_every_metric(files, capsys):
    assert run_cmd("hsemo_jax.commands.evaluate",
                   [str(files / "pred.txt"), str(files / "gt.txt"), "--compare", str(files / "pred_b.txt")]) == 0
    out = capsys.readouterr().out
    pred = abaw_io.read_mtl_predictions(str(files / "pred.txt"))
    other = abaw_io.read_mtl_predictions(str(files / "pred_b.txt"))
    gt = abaw_io.read_mtl_labels(str(files / "gt.txt"))
    ref = metrics.abaw_mtl(va_true=gt.va, va_pred=pred.va, expr_true=gt.expr, expr_pred=pred.expr,
                           au_true=gt.aus, au_probs=pred.aus)
    for key in ("P_VA", "CCC_V", "CCC_A", "P_EXPR", "P_AU", "P_MTL"):
        assert numbers(out, key) == pytest.approx(ref[key], abs=6e-5), key
    assert numbers(out, "Cohen's kappa") == pytest.approx(cohen_kappa_score(pred.expr_labels, other.expr_labels),
                                                          abs=6e-5)
    assert "best thresholds on this set" in out and "F1 per AU: AU1" in out


def test_evaluate_with_smoothing_and_blending(files, capsys):
    run_cmd("hsemo_jax.commands.evaluate",
            [str(files / "pred.txt"), str(files / "gt.txt"), "--smooth-expr", "hsemotion:1e5:3",
             "--blend-with", str(files / "pred_b.txt"), "--blend-weights", "1,0.5,1"])
    out = capsys.readouterr().out
    pred = abaw_io.read_mtl_predictions(str(files / "pred.txt"))
    other = abaw_io.read_mtl_predictions(str(files / "pred_b.txt"))
    gt = abaw_io.read_mtl_labels(str(files / "gt.txt"))
    ex = smooth(0.5 * pred.expr + 0.5 * other.expr, pred.videos, pred.frames, sigma=1e5, k=3, compat="hsemotion")
    m = gt.expr > -1
    assert numbers(out, "P_EXPR") == pytest.approx(metrics.macro_f1(gt.expr[m], ex[m]), abs=6e-5)


def test_evaluate_errors(files, tmp_path):
    lines = (files / "pred.txt").read_text().splitlines()
    (tmp_path / "p.txt").write_text("\n".join(lines + ["ghost/00001.jpg" + lines[1][lines[1].index(","):]]) + "\n")
    with pytest.raises(InputError, match=rf"p.txt:{len(lines) + 1}: video 'ghost' is not in the ground truth"):
        run_cmd("hsemo_jax.commands.evaluate", [str(tmp_path / "p.txt"), str(files / "gt.txt")])
    with pytest.raises(SystemExit):  # argparse: bad smoothing spec
        run_cmd("hsemo_jax.commands.evaluate", [str(files / "pred.txt"), "--smooth-va", "median:1:2"])


def test_evaluate_ce(tmp_path, capsys):
    images = [abaw_io.ce_image_name("v", f) for f in range(1, 8)]
    abaw_io.write_ce_submission(str(tmp_path / "a.txt"), images, np.arange(7))
    abaw_io.write_ce_submission(str(tmp_path / "b.txt"), images, np.array([0, 1, 2, 3, 4, 6, 6]))
    run_cmd("hsemo_jax.commands.evaluate", [str(tmp_path / "a.txt"), "--compare", str(tmp_path / "b.txt")])
    out = capsys.readouterr().out
    prior = np.array([14445, 24915, 10780, 10637, 10535, 10112, 8878]) / 90302
    assert numbers(out, r"KL\(prior \|\| histogram\)") == pytest.approx(np.sum(prior * np.log(prior * 7)), abs=6e-5)
    assert numbers(out, "Cohen's kappa") == pytest.approx(cohen_kappa_score(np.arange(7), [0, 1, 2, 3, 4, 6, 6]),
                                                          abs=6e-5)


def test_sweep_command_writes_csv(files, capsys, tmp_path):
    out_csv = tmp_path / "table.csv"
    run_cmd("hsemo_jax.commands.sweep",
            [str(files / "pred.txt"), str(files / "gt.txt"), "--sigmas", "10", "--ks", "0,3",
             "--tasks", "EXPR,VA", "--csv", str(out_csv)])
    out = capsys.readouterr().out
    assert "best EXPR:" in out and "best VA:" in out and f"wrote {out_csv}" in out
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == 4 and {r["task"] for r in rows} == {"EXPR", "VA"}
    pred = abaw_io.read_mtl_predictions(str(files / "pred.txt"))
    gt = abaw_io.read_mtl_labels(str(files / "gt.txt"))
    m = gt.expr > -1
    unsmoothed = [r for r in rows if r["task"] == "EXPR" and r["k"] == "0"][0]
    assert float(unsmoothed["score"]) == pytest.approx(metrics.macro_f1(gt.expr[m], pred.expr[m]), abs=1e-9)


def _edited(files, tmp_path, column, value, row=1):
    """pred.txt with field `column` of data row `row` replaced by `value`."""
    lines = (files / "pred.txt").read_text().splitlines()
    fields = lines[row].split(",")
    fields[column] = value
    lines[row] = ",".join(fields)
    path = tmp_path / "edited.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_evaluate_refuses_expression_probabilities_that_are_not_a_distribution(files, tmp_path):
    lines = (files / "pred.txt").read_text().splitlines()
    fields = lines[3].split(",")
    fields[3:11] = ["0.9"] * 8
    lines[3] = ",".join(fields)
    (tmp_path / "p.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"p.txt:4: .*sum to 7.2"):
        run_cmd("hsemo_jax.commands.evaluate", [str(tmp_path / "p.txt"), str(files / "gt.txt")])
    with pytest.raises(InputError, match=r"edited.txt:2: Neutral probability '-0.2' outside \[0, 1\]"):
        run_cmd("hsemo_jax.commands.evaluate", [str(_edited(files, tmp_path, 3, "-0.2")), str(files / "gt.txt")])


def test_evaluate_warns_of_valence_outside_its_range(files, tmp_path, capsys):
    path = _edited(files, tmp_path, 1, "3.5", row=5)
    assert run_cmd("hsemo_jax.commands.evaluate", [str(path), str(files / "gt.txt")]) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and f"{path}:6" in err and "valence 3.5 outside [-1, 1]" in err, err


@pytest.mark.parametrize("thresholds", ["0", "1", "1.5", "-0.1", "0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,0.5,1"])
def test_au_thresholds_outside_zero_one_are_refused(files, thresholds, capsys):
    with pytest.raises(SystemExit):
        run_cmd("hsemo_jax.commands.evaluate", [str(files / "pred.txt"), str(files / "gt.txt"),
                                                "--au-thresholds", thresholds])
    assert "between 0 and 1" in capsys.readouterr().err


def test_files_with_a_utf8_byte_order_mark_are_read(files, tmp_path, capsys):
    for name in ("pred.txt", "gt.txt"):
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + (files / name).read_bytes())
    assert run_cmd("hsemo_jax.commands.evaluate", [str(tmp_path / "pred.txt"), str(tmp_path / "gt.txt")]) == 0
    with_bom = capsys.readouterr().out
    run_cmd("hsemo_jax.commands.evaluate", [str(files / "pred.txt"), str(files / "gt.txt")])
    assert with_bom.replace(str(tmp_path), "") == capsys.readouterr().out.replace(str(files), "")
    images = [abaw_io.ce_image_name("v", f) for f in range(1, 8)]
    abaw_io.write_ce_submission(str(tmp_path / "ce.txt"), images, np.arange(7))
    (tmp_path / "ce.txt").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "ce.txt").read_bytes())
    assert run_cmd("hsemo_jax.commands.evaluate", [str(tmp_path / "ce.txt")]) == 0
    assert "C-EXPR submission" in capsys.readouterr().out


def test_sweep_calls_unsmoothed_best_when_smoothing_only_ties_it(files, tmp_path, capsys):
    """A notebook sigma of 0.1 gives the neighbours weights of e^-10: the scores move in the 6th
    digit at most, which is no reason to smooth."""
    run_cmd("hsemo_jax.commands.sweep",
            [str(files / "pred.txt"), str(files / "gt.txt"), "--filters", "box,gaussian,hsemotion",
             "--sigmas", "0.1", "--ks", "0,1", "--csv", str(tmp_path / "t.csv")])
    out = capsys.readouterr().out
    for task in ("VA", "AU"):
        best = re.search(rf"best {task}: .*", out).group(0)
        assert "unsmoothed" in best and "filter" not in best and "sigma" not in best, best


def test_sweep_checks_its_csv_path_before_the_sweep(files, tmp_path, monkeypatch):
    from hsemo_jax.postprocess import sweeping

    monkeypatch.setattr(sweeping, "sweep", lambda *a, **k: pytest.fail("the sweep ran"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        run_cmd("hsemo_jax.commands.sweep", [str(files / "pred.txt"), str(files / "gt.txt"),
                                             "--csv", str(tmp_path / "file" / "t.csv")])


@pytest.mark.parametrize("which", ["pred", "gt", "blend"])
def test_sweep_refuses_a_csv_path_that_is_one_of_its_inputs(files, tmp_path, monkeypatch, which):
    """`--csv` naming an input (here through another spelling of its path) would replace it with the table."""
    import shutil

    from hsemo_jax.postprocess import sweeping

    monkeypatch.setattr(sweeping, "sweep", lambda *a, **k: pytest.fail("the sweep ran"))
    for name in ("pred.txt", "gt.txt", "pred_b.txt"):
        shutil.copy(files / name, tmp_path / name)
    target = {"pred": "pred.txt", "gt": "gt.txt", "blend": "pred_b.txt"}[which]
    before = (tmp_path / target).read_bytes()
    (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match="would replace the input"):
        run_cmd("hsemo_jax.commands.sweep", [str(tmp_path / "pred.txt"), str(tmp_path / "gt.txt"),
                                             "--blend-with", str(tmp_path / "pred_b.txt"),
                                             "--csv", str(tmp_path / "sub" / ".." / target)])
    assert (tmp_path / target).read_bytes() == before


def test_ground_truth_without_its_header_is_refused_not_read_short(files, tmp_path):
    """The header line was skipped unread, so a file without one silently lost its first labelled row."""
    gt = tmp_path / "gt.txt"
    gt.write_text("\n".join((files / "gt.txt").read_text().splitlines()[1:]) + "\n")
    with pytest.raises(InputError, match=r"gt.txt:1: expected a header line .* found a data row 'vidA/00001.jpg"):
        abaw_io.read_mtl_labels(str(gt))


@pytest.mark.parametrize("grid", ["0:1:0", "0:2:0.5", "0,0.5"])
def test_threshold_grids_with_a_zero_step_or_outside_zero_one_are_refused(files, grid, capsys):
    """A zero STEP was a ZeroDivisionError traceback; thresholds of 0 or >= 1 were searched."""
    with pytest.raises(SystemExit):
        run_cmd("hsemo_jax.commands.evaluate", [str(files / "pred.txt"), str(files / "gt.txt"),
                                                "--threshold-grid", grid])
    assert "--threshold-grid" in capsys.readouterr().err


def test_evaluate_blend_weights_without_blend_with_is_refused(files):
    """It was ignored silently (sweep refused it)."""
    with pytest.raises(InputError, match="--blend-weights needs --blend-with"):
        run_cmd("hsemo_jax.commands.evaluate", [str(files / "pred.txt"), str(files / "gt.txt"),
                                                "--blend-weights", "0.5,0.5,0.5"])


def test_a_c_expr_submission_that_repeats_an_image_is_refused(tmp_path):
    """MTL files refused repeated images, C-EXPR submissions counted them twice in the histogram."""
    images = [abaw_io.ce_image_name("v", f) for f in range(1, 5)]
    abaw_io.write_ce_submission(str(tmp_path / "ce.txt"), images, [0, 1, 2, 3])
    lines = (tmp_path / "ce.txt").read_text().splitlines()
    (tmp_path / "ce.txt").write_text("\n".join(lines + [lines[2]]) + "\n")
    with pytest.raises(InputError, match=r"ce.txt:6: image 'v/00002.jpg' already listed on line 3"):
        abaw_io.read_ce_submission(str(tmp_path / "ce.txt"))


def test_evaluate_ground_truth_without_one_tasks_labels_reports_the_others(files, tmp_path, capsys):
    """A ground truth with no VA label (an EXPR + AU set) was refused whole with 'mask: no valid frames to
    evaluate'; now VA is left out, the other tasks are reported, P_MTL is not."""
    lines = (files / "gt.txt").read_text().splitlines()
    rows = [lines[0]] + [",".join([f[0], "-5", "-5", *f[3:]]) for f in (r.split(",") for r in lines[1:])]
    (tmp_path / "gt.txt").write_text("\n".join(rows) + "\n")
    assert run_cmd("hsemo_jax.commands.evaluate", [str(files / "pred.txt"), str(tmp_path / "gt.txt")]) == 0
    out = capsys.readouterr().out
    pred = abaw_io.read_mtl_predictions(str(files / "pred.txt"))
    gt = abaw_io.read_mtl_labels(str(tmp_path / "gt.txt"))
    ref = metrics.abaw_mtl(expr_true=gt.expr, expr_pred=pred.expr, au_true=gt.aus, au_probs=pred.aus)
    assert "VA    no labelled frame" in out and "P_MTL not given" in out
    assert numbers(out, "P_EXPR") == pytest.approx(ref["P_EXPR"], abs=6e-5)
    assert numbers(out, "P_AU") == pytest.approx(ref["P_AU"], abs=6e-5)


@pytest.mark.parametrize("command", ["evaluate", "sweep"])
def test_the_same_file_as_predictions_and_ground_truth(files, command):
    """It was reported as a field-count error on line 2."""
    with pytest.raises(InputError, match="given as both the predictions and the ground truth"):
        run_cmd(f"hsemo_jax.commands.{command}", [str(files / "pred.txt"), str(files / "pred.txt")])


def test_sweep_warns_of_a_submission_file_on_stderr(files, tmp_path, capsys):
    """The warning went to stdout, into the table a script reads, unlike the other warnings."""
    pred = abaw_io.read_mtl_predictions(str(files / "pred.txt"))
    abaw_io.write_mtl_submission(str(tmp_path / "sub.txt"), pred.images, pred.va, pred.expr_labels,
                                 (pred.aus >= 0.5).astype(int))
    run_cmd("hsemo_jax.commands.sweep", [str(tmp_path / "sub.txt"), str(files / "gt.txt"), "--ks", "0,1",
                                         "--sigmas", "1", "--csv", str(tmp_path / "t.csv")])
    captured = capsys.readouterr()
    assert "holds labels, not scores" in captured.err and "warning" not in captured.out


@pytest.mark.parametrize("extra, words", [
    (["--top", "-3"], "--top"),  # printed 1 row
    (["--tasks", "EXPR,FACE"], "--tasks"),
    (["--filters", "median"], "unknown filter"),
    (["--blend-weights", "0.5"], "--blend-with"),
])
def test_sweep_settings_are_refused_before_a_file_is_read(files, monkeypatch, extra, words):
    from hsemo_jax.postprocess import abaw_io

    monkeypatch.setattr(abaw_io, "read_mtl_predictions", lambda *a, **k: pytest.fail("a file was read"))
    with pytest.raises(InputError, match=words):
        run_cmd("hsemo_jax.commands.sweep", [str(files / "pred.txt"), str(files / "gt.txt"), *extra])


@pytest.mark.parametrize("flag", ["--sigmas", "--ks"])
def test_an_empty_list_is_a_usage_error_not_the_default(files, flag, capsys):
    with pytest.raises(SystemExit):
        run_cmd("hsemo_jax.commands.sweep", [str(files / "pred.txt"), str(files / "gt.txt"), flag, ","])
    assert flag in capsys.readouterr().err
