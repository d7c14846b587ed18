"""MTCNN with facenet-pytorch's weights: its `pnet.pt`, `rnet.pt`, `onet.pt` (legacy torch.save
state dicts) read without torch and shape-checked into `hsemo_jax.models.mtcnn.MTCNN`."""
from __future__ import annotations

import os
from collections.abc import Mapping

from hsemo_jax.convert.keymaps import load_torch_state
from hsemo_jax.convert.torch_reader import read_state_dict
from hsemo_jax.models.mtcnn import MTCNN

NETS = ("pnet", "rnet", "onet")


def read_mtcnn(files: Mapping[str, str | os.PathLike]) -> MTCNN:
    """MTCNN (eval mode) from {"pnet": path, "rnet": path, "onet": path}; CheckpointError naming
    the file whose keys or shapes do not fit."""
    model = MTCNN()
    for name in NETS:
        load_torch_state(getattr(model, name), "mtcnn", read_state_dict(files[name]), source=str(files[name]))
    model.eval()
    return model
