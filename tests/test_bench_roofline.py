"""`hsemo-jax bench roofline`: figures on paper from XLA's cost analysis of the bf16 train step."""
import math

from hsemo_jax.bench import roofline


def test_roofline_of_a_small_backbone_is_positive_and_labelled_on_paper():
    (row,) = roofline.rows(["mobilefacenet"], batch=8, loader_seconds=0.5)  # the loader rate measured
    values = [row["flops"], row["bytes"], row["loader"]] + [row[c.name] for c in roofline.CHIPS]
    assert all(math.isfinite(v) and v > 0 for v in values), row
    assert row["flops"] > 1e9  # a MobileFaceNet train step at 112 px: ~3x its ~0.9 GFLOP forward
    for chip in roofline.CHIPS:
        rate, bound = roofline.roofline(row["flops"], row["bytes"], chip)
        assert rate == min(chip.flops / row["flops"], chip.bandwidth / row["bytes"]) == row[chip.name]
        assert bound == row[f"{chip.name} bound"] and row[f"{chip.name} cores"] == math.ceil(rate / row["loader"])
    assert roofline.header(8, None).startswith("# ON PAPER, NOT MEASURED")
    assert "| mobilefacenet | 112 |" in roofline.format_table([row])
