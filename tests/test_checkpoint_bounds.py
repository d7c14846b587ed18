"""`hsemo-jax convert` on hostile checkpoints: each is refused with one line and exit 2, in bounded
memory and time, leaving nothing at `--out`.

The command runs in a subprocess whose address space is capped at 1 GiB (or 512 MiB beyond what
its imports hold, if those alone come near 1 GiB) once it has imported what the command needs, so
an allocation the size of what these files claim fails, and under a timeout that ends a walk of
what they describe that would not end. The files are a few kilobytes to two megabytes, written by
hand (tests/torch_files.py).
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from torch_files import Tensor, deflated_zeros, module_chain_pickle, state_dict_pickle, torch_archive

ROOT = Path(__file__).resolve().parents[1]

# One process runs every case: what the command needs is imported first, then the address space is
# capped, then `hsemo-jax convert` runs on each file in turn (its stderr captured per case).
_LIMITED = r"""
import contextlib, io, json, resource, sys, traceback
from hsemo_jax import cli
import hsemo_jax.convert
cli.build_parser("convert")  # imports the command's module
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
limit = max(1 << 30, vm + (512 << 20))
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
results = {}
for name, argv in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            rc = cli.main(argv)
        except BaseException:
            rc = 1
            traceback.print_exc()
    results[name] = [rc, err.getvalue()]
print(json.dumps(results))
"""

GiB2 = 2**31 - 2**20  # just under 2 GiB: a plain (not zip64) record size


def _case(name: str, path: Path) -> str:
    """Write the hostile checkpoint `name` to `path`; returns a regex of the expected error."""
    one_float = {"0": np.float32(1).tobytes()}
    if name == "storage_inflates_to_2GiB":
        torch_archive(path, state_dict_pickle({"w": Tensor("0", GiB2 // 4, (GiB2 // 4,), (1,))}),
                      {"0": deflated_zeros(GiB2)})
        return rf"storage 'archive/data/0' of {GiB2} bytes .*more than 1073741824 bytes"
    if name == "record_larger_than_its_tensors":
        torch_archive(path, state_dict_pickle({"w": Tensor("0", 4, (4,), (1,))}), {"0": deflated_zeros(GiB2)})
        return rf"record 'archive/data/0' is {GiB2} bytes, expected 16 \(FloatStorage of 4 elements\)"
    if name == "data_pkl_inflates_to_1GiB":
        torch_archive(path, deflated_zeros(1 << 30))
        return r"record 'archive/data.pkl' is 1073741824 bytes, more than .* a checkpoint's pickle"
    if name == "stride_0_20000x20000":
        torch_archive(path, state_dict_pickle({"w": Tensor("0", 1, (20000, 20000), (0, 0))}), one_float)
        return r"size \(20000, 20000\), stride \(0, 0\) would materialise 1600000000 bytes from a storage of 4 "
    if name == "stride_0_10e12":
        torch_archive(path, state_dict_pickle({"w": Tensor("0", 1, (10**12,), (0,))}), one_float)
        return r"size \(1000000000000,\), stride \(0,\) would materialise 4000000000000 bytes from a storage of 4 "
    if name == "overlapping_strides":
        torch_archive(path, state_dict_pickle({"w": Tensor("0", 2000, (1000, 1000), (1, 1))}),
                      {"0": bytes(8000)})
        return r"size \(1000, 1000\), stride \(1, 1\) would materialise 4000000 bytes from a storage of 8000 "
    if name == "modules_shared_40_deep":
        torch_archive(path, module_chain_pickle(40, ("a", "b")))
        return r"more than 100000 modules"
    if name == "modules_nested_3000_deep":
        torch_archive(path, module_chain_pickle(3000, ("m",)))
        return r"modules nested more than 100 deep"
    raise AssertionError(name)


CASES = ["storage_inflates_to_2GiB", "record_larger_than_its_tensors", "data_pkl_inflates_to_1GiB",
         "stride_0_20000x20000", "stride_0_10e12", "overlapping_strides", "modules_shared_40_deep",
         "modules_nested_3000_deep"]


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """name -> (folder holding only the case's file, the file, exit code, stderr)."""
    cases = {}
    for name in CASES:
        folder = tmp_path_factory.mktemp(name)
        src = folder / f"{name}.pt"
        expected = _case(name, src)
        assert src.stat().st_size < 3 << 20
        cases[name] = (folder, src, expected)
    argv = {name: ["convert", str(src), "--out", str(folder / "out")] for name, (folder, src, _) in cases.items()}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _LIMITED, json.dumps(argv)], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.splitlines()[-1])
    return {name: (folder, src, expected, *results[name]) for name, (folder, src, expected) in cases.items()}


@pytest.mark.parametrize("name", CASES)
def test_hostile_checkpoint_is_refused_in_bounded_memory(refusals, name):
    folder, src, expected, rc, err = refusals[name]
    err = err.strip()
    assert rc == 2, err[-3000:]
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-3000:]
    assert err.startswith(f"hsemo-jax convert: error: {src}: "), err
    assert re.search(expected, err), err
    assert [p.name for p in folder.iterdir()] == [src.name]  # nothing at --out, no temporary folders
