"""Bad user paths on any command: exit 2 and one line naming the path, never a traceback."""
import numpy as np

from hsemo_jax import cli
from train_fixtures import feature_data


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for w in words:
        assert w in err, err
    return err


def test_a_folder_given_as_an_input_file(tmp_path, capsys):
    folder = tmp_path / "predictions"
    folder.mkdir()
    assert cli.main(["evaluate", str(folder), str(folder)]) == 2
    _one_line_error(capsys, str(folder))


def test_an_output_below_a_regular_file(tmp_path, capsys):
    """The run folder would go below a regular file."""
    np.savez(tmp_path / "f.npz", **feature_data(64, d=4))
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder\n")
    assert cli.main(["train-head", str(tmp_path / "f.npz"), "--out", str(blocker / "run"),
                     "--set", "train.batch_size=16"]) == 2  # (the default 512 is refused first: 64 rows)
    _one_line_error(capsys, str(blocker))


def test_a_usage_error_is_one_line_that_says_where_the_help_is(capsys):
    """argparse printed its usage block (dozens of lines for predict) before the error."""
    import pytest

    for argv, words in ((["predict", "clip.mp4", "--batch-size", "many"], ("hsemo-jax predict: error:", "--batch-size",
                                                                              "hsemo-jax predict --help")),
                        (["predcit"], ("hsemo-jax: error:", "invalid choice", "hsemo-jax --help"))):
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        assert "usage:" not in _one_line_error(capsys, *words)
