"""Temporal smoothing of per-frame scores (spec §4.2, §4.4; paper eqs. 4-5).

All filters are one banded weighted mean, computed per lane of a `Packed` layout and vmapped over
lanes. A slot never takes a neighbour from another segment (video) or from padding.

    y_hat[i] = sum_j w(i, j) y[j] / sum_j w(i, j)

* eq. 5, `method="gaussian"`: w = exp(-dt^2 / (2 sigma^2)) for |dt| <= k, dt in frame numbers,
  summed over the frames that are present (computed on the dense frame grid of each video).
* eq. 4, `method="box"`: the same with w = 1.
* `compat="hsemotion"`, gaussian: the ABAW-7 MTL notebook loop (mtl7#c64) exactly. It walks rows
  of the input, not frames: row i takes rows i-k+1 .. i+k of the same run of video ids (left
  window one shorter, stops at the first row of another video), never row 0 of the whole input as a
  left neighbour (`range(i-1, start, -1)` with start = 0 skips it), and weights
  exp(-(frame_j - frame_i)^2 / sigma) with the notebook's sigma (= 2 sigma_gauss^2).
* `compat="hsemotion"`, box: the ABAW-6 track filter (aw6#c69, ce7#c84): frames without a face
  (1 .. last frame of the video) are linearly interpolated, then mean(y[max(i-k, 0) : i+k+1])
  over that dense sequence, truncated at the video's ends.

The C-EXPR Gaussian (ce7#c84-c89: symmetric frame window, frames with a face only) is eq. 5 with
2 sigma^2 = the notebook's sigma at the frames that have a face; `compound.video_tracks` adds its
fallback for frames without one.

Engine: lanes are cut into tiles of `TILE` slots plus a halo of k_max slots on each side; per
tile the window grows level by level (`lax.fori_loop`; level m adds the offsets at distance m),
for all sigmas at once, and the partial sums are read off at every requested k. So one compiled
call returns the result for a whole (sigma x k) grid, which is what the sweep uses.
Results are float32; agreement with the float64 notebook loops is about 1e-7.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hsemo_jax import checks
from hsemo_jax.errors import InputError
from hsemo_jax.postprocess.packing import Packed, pack, pack_dense

# kinds of the banded engine
ROWS_NOTEBOOK = "rows_notebook"  # asymmetric row window, kernel on frame-number distance
DENSE = "dense"  # symmetric window on a dense frame grid, scalar kernel exp(-d^2 * inv)


TILE = 512  # slots per tile: the (S, C, TILE) accumulators stay in cache while the window grows


def _tile(y_cw, seg_w, frames_w, present_w, left_ok_w, inv_s, k_dyn, *, kind: str, ks: tuple[int, ...]):
    """One tile with its halo. Arrays cover tile + 2 * kmax slots (halo of kmax on each side);
    y_cw (C, W) channel-major, the others (W,); inv_s (S,) kernel inverse widths.

    Returns (len(ks), S, C, tile): the smoothed interior for every window size in `ks` (ascending).
    With a traced `k_dyn` instead, ks = (halo,) only sizes the halo and the window is k_dyn <= halo:
    one compilation then serves every k up to the halo.
    """
    kmax = ks[-1]
    tile = y_cw.shape[1] - 2 * kmax
    centre = lambda a: jax.lax.slice_in_dim(a, kmax, kmax + tile, axis=a.ndim - 1)
    seg_i, f_i = centre(seg_w), centre(frames_w)
    real = seg_i >= 0
    present = present_w.astype(jnp.float32)
    left_ok = left_ok_w.astype(jnp.float32)

    def add(carry, d, gate):
        num, den = carry
        sl = lambda a: jax.lax.dynamic_slice_in_dim(a, kmax + d, tile, axis=a.ndim - 1)
        ys, segs = sl(y_cw), sl(seg_w)
        pair = jnp.where((segs == seg_i) & real, sl(present), 0.0) * gate * jnp.where(d < 0, sl(left_ok), 1.0)
        if kind == ROWS_NOTEBOOK:
            dt = (sl(frames_w) - f_i).astype(jnp.float32)
            kern = jnp.exp(-(dt * dt)[None, :] * inv_s[:, None])  # (S, tile)
        else:
            df = jnp.asarray(d, jnp.float32)
            kern = jnp.exp(-(df * df) * inv_s)[:, None]  # (S, 1)
        wgt = kern * pair[None, :]  # (S, tile)
        return num + wgt[:, None, :] * ys[None], den + wgt

    s, c = inv_s.shape[0], y_cw.shape[0]
    zero = (jnp.zeros((s, c, tile), jnp.float32), jnp.zeros((s, tile), jnp.float32))
    carry = add(zero, 0, 1.0)

    def level(m, carry):  # level m adds the offsets at distance m
        carry = add(carry, m, 1.0)
        if kind == ROWS_NOTEBOOK:  # the notebook's left window is one shorter: -(m-1), from level 2 on
            return add(carry, -(m - 1), jnp.asarray(m >= 2, jnp.float32))
        return add(carry, -m, 1.0)

    # one loop body for all window sizes: segment j grows the window from ks[j-1] to ks[j] and
    # writes snapshot j (bounds are data, so the body is compiled once however many ks there are)
    bounds = jnp.asarray(ks, jnp.int32) if k_dyn is None else jnp.reshape(k_dyn, (1,)).astype(jnp.int32)

    def segment(j, state):
        carry, out = state
        lo = jnp.where(j == 0, 1, bounds[j - 1] + 1)
        carry = jax.lax.fori_loop(lo, bounds[j] + 1, level, carry)
        num, den = carry
        return carry, out.at[j].set(num / jnp.where(den > 0, den, 1.0)[:, None, :])

    out = jnp.zeros((bounds.shape[0], s, c, tile), jnp.float32)
    return jax.lax.fori_loop(0, bounds.shape[0], segment, (carry, out))[1]


def _lane(y_tc, seg_t, frames_t, present_t, left_ok_t, inv_s, k_dyn, *, kind: str, ks: tuple[int, ...]):
    """One lane (T slots), tile by tile (`lax.map`). Returns (len(ks), S, T, C)."""
    kmax = ks[-1]
    t = y_tc.shape[0]
    tile = min(TILE, t)
    nt = -(-t // tile)
    right = nt * tile - t + kmax
    pad = lambda a, v: jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(kmax, right)], constant_values=v)
    idx = (jnp.arange(nt) * tile)[:, None] + jnp.arange(tile + 2 * kmax)[None, :]  # (nt, W)
    y_ncw = jnp.moveaxis(pad(y_tc.astype(jnp.float32).T, 0.0)[:, idx], 1, 0)
    tiles = (y_ncw, pad(seg_t, -1)[idx], pad(frames_t, 0)[idx], pad(present_t, False)[idx],
             pad(left_ok_t, False)[idx])
    out = jax.lax.map(lambda a: _tile(*a, inv_s, k_dyn, kind=kind, ks=ks), tiles)  # (nt, nk, S, C, tile)
    out = jnp.moveaxis(out, 0, 3).reshape(out.shape[1:4] + (nt * tile,))[..., :t]  # (nk, S, C, T)
    return jnp.swapaxes(out, -1, -2)


@partial(jax.jit, static_argnames=("kind", "ks"))
def smooth_packed(y_btc, seg_bt, frames_bt, present_bt, left_ok_bt, inv_s, k_dyn=None, *, kind: str,
                  ks: tuple[int, ...]):
    """Banded smoothing of every lane; vmapped over lanes (videos, in the one-video-per-lane layout).

    y_btc float (B, T, C); seg_bt int (B, T) (-1 = padding); frames_bt int (B, T); present_bt bool
    (B, T) (slot has a value); left_ok_bt bool (B, T) (slot may serve as a left neighbour);
    inv_s float (S,); k_dyn: None, or a traced int window <= ks[0] (then len(ks) == 1). kind: ROWS_NOTEBOOK (w = exp(-dframe^2 * inv), offsets -(k-1)..k) or DENSE
    (w = exp(-d^2 * inv), offsets -k..k). ks: ascending window sizes (static).
    Returns (len(ks), S, B, T, C) float32. Inside a lane the work goes tile by tile with a halo of
    max(ks) slots, each tile growing its window level by level (`lax.fori_loop`), all sigmas at once.
    """
    f = jax.vmap(partial(_lane, kind=kind, ks=ks), in_axes=(0, 0, 0, 0, 0, None, None), out_axes=2)
    return f(y_btc, seg_bt, frames_bt, present_bt, left_ok_bt, inv_s, k_dyn)


@jax.jit
def interpolate_packed(values_nc, prev_bt, next_bt, w_bt):
    """Dense values (B, T, C) = w * values[prev] + (1 - w) * values[next] (spec §4.4 gap filling)."""
    w = w_bt[..., None]
    return w * values_nc[prev_bt] + (1.0 - w) * values_nc[next_bt]


def check_settings(method: str, compat, sigma, k) -> None:
    """InputError naming every bad smoothing setting (a caller checks them before the work)."""
    if method not in ("gaussian", "box"):
        raise InputError(f"method must be 'gaussian' or 'box', got {method!r}")
    if compat not in (None, "hsemotion"):
        raise InputError(f"compat must be None or 'hsemotion', got {compat!r}")
    bad = []
    if method == "gaussian" and (sigma is None or not np.isfinite(sigma) or sigma <= 0):
        bad.append(f"sigma must be > 0 for gaussian smoothing, got {sigma!r}")
    if k is None or int(k) != k or k < 0:
        bad.append(f"k (window half-width in frames; the notebook's delta) must be an int >= 0, got {k!r}")
    if bad:
        raise InputError("; ".join(bad))


def inv_widths(method: str, compat, sigmas: Sequence[float]) -> np.ndarray:
    """Kernel inverse widths: eq. 5 exp(-d^2/(2 sigma^2)); notebook exp(-d^2/sigma); box 0."""
    s = np.asarray(sigmas, dtype=np.float64)
    if method == "box":
        return np.zeros(1, np.float32)
    return (1.0 / s if compat == "hsemotion" else 1.0 / (2.0 * s * s)).astype(np.float32)


def layout(video_ids, frames, *, method: str, compat, lanes: int | None = None, last_frame=None) -> Packed:
    """The packing each filter works on (see module docstring)."""
    if compat == "hsemotion" and method == "gaussian":
        return pack(video_ids, frames, lanes=lanes, segments="runs")
    if compat == "hsemotion":
        return pack_dense(video_ids, frames, start=1, last_frame=last_frame, lanes=lanes)
    return pack_dense(video_ids, frames, start="first", lanes=lanes)


def filter_kind(method: str, compat) -> tuple[str, bool]:
    """(engine kind, interpolate gaps first) for a (method, compat) pair."""
    if compat == "hsemotion":
        return (ROWS_NOTEBOOK, False) if method == "gaussian" else (DENSE, True)
    return DENSE, False


def layout_arrays(lay: Packed) -> dict:
    """The arrays of a layout that the traced filter needs (numpy; pass through jit as a pytree)."""
    arrs = dict(seg_bt=lay.seg_bt, frames_bt=lay.frames_bt, present_bt=lay.present_bt,
                left_ok_bt=lay.left_ok_bt, lane_n=lay.lane_n, slot_n=lay.slot_n)
    if lay.interp_prev_bt is not None:
        arrs.update(prev_bt=lay.interp_prev_bt, next_bt=lay.interp_next_bt, w_bt=lay.interp_w_bt)
    return arrs


def apply_filter(values_nc, arrs: dict, inv_s, k_dyn=None, *, kind: str, interpolate: bool, ks: tuple[int, ...]):
    """Traceable: flat values (N, C) -> (len(ks), S, N, C) smoothed, on layout arrays `arrs`."""
    v = jnp.asarray(values_nc, jnp.float32)
    seg = arrs["seg_bt"]
    if interpolate:  # every frame of the dense grid gets a (possibly interpolated) value
        y_btc = interpolate_packed(v, arrs["prev_bt"], arrs["next_bt"], arrs["w_bt"])
        present = seg >= 0
    else:
        y_btc = jnp.zeros(seg.shape + v.shape[1:], jnp.float32).at[arrs["lane_n"], arrs["slot_n"]].set(v)
        present = arrs["present_bt"]
    out = smooth_packed(y_btc, seg, arrs["frames_bt"], present, arrs["left_ok_bt"],
                        jnp.asarray(inv_s, jnp.float32), k_dyn, kind=kind, ks=ks)
    return out[:, :, arrs["lane_n"], arrs["slot_n"]]


_apply_filter_jit = jax.jit(apply_filter, static_argnames=("kind", "interpolate", "ks"))


def halo_bucket(k: int) -> int:
    """Static halo for a single window k: the next power of two >= max(k, 64). The loop runs only
    k levels, so a larger halo costs a little memory, and all k <= 64 share one compilation."""
    return 1 << max(6, (int(k) - 1).bit_length())


def run_filter(values_nc, lay: Packed, *, method: str, compat, inv_s, ks: Sequence[int]):
    """Apply one filter family to flat values (N, C) on layout `lay`; returns (len(ks), S, N, C)."""
    kind, interp = filter_kind(method, compat)
    ks = tuple(sorted(set(int(k) for k in ks)))
    if len(ks) == 1:  # one window: traced k, static halo bucket -> fewer compilations
        return _apply_filter_jit(values_nc, layout_arrays(lay), inv_s, jnp.int32(ks[0]), kind=kind,
                                 interpolate=interp, ks=(halo_bucket(ks[0]),))
    return _apply_filter_jit(values_nc, layout_arrays(lay), inv_s, kind=kind, interpolate=interp, ks=ks)


def smooth(scores, video_ids, frames, *, method: str = "gaussian", sigma: float | None = None,
           k: int | None = None, compat: str | None = None, lanes: int | None = None,
           last_frame: dict | None = None) -> np.ndarray:
    """Smooth flat per-frame scores within each video.

    scores: (N, C) or (N,) float, rows sorted by (video, frame); video_ids: (N,) str/int;
    frames: (N,) int real frame numbers (gaps allowed). Returns float32 of the same shape.

    method="gaussian" (eq. 5; sigma = std in frames, k = half-width in frames) or "box" (eq. 4;
    sigma unused). compat="hsemotion": reproduce the original notebooks, sigma and k being the
    notebook's `sigma` (2 sigma^2) and `delta`; gaussian = the MTL row loop, box = gap
    interpolation + centred box (see module docstring). `last_frame` ({video: frame}) only affects
    the hsemotion box (videos extended to that frame by holding the last value).
    lanes: layout option (see `packing.pack`); the result does not depend on it.
    """
    check_settings(method, compat, sigma, k)
    y = checks.as_float(scores, "scores", ndim=(1, 2))
    checks.same_length(scores=y, video_ids=video_ids, frames=frames)
    squeeze = y.ndim == 1
    y2 = y[:, None] if squeeze else y
    lay = layout(video_ids, frames, method=method, compat=compat, lanes=lanes, last_frame=last_frame)
    out = run_filter(y2, lay, method=method, compat=compat, inv_s=inv_widths(method, compat, [sigma or 1.0]),
                     ks=(int(k),))
    res = np.asarray(out[0, 0])
    return res[:, 0] if squeeze else res


def interpolate_gaps(scores, video_ids, frames, *, last_frame: dict | None = None, start: int = 1):
    """Dense per-frame tracks with frames without a face filled (spec §4.4 step 1).

    Returns (scores_dense (M, C), video_ids_dense (M,), frames_dense (M,)) covering frames
    start..last of every video (last = last row's frame, or `last_frame[video]` if larger).
    """
    y = checks.as_float(scores, "scores", ndim=(1, 2))
    checks.same_length(scores=y, video_ids=video_ids, frames=frames)
    lay = pack_dense(video_ids, frames, start=start, last_frame=last_frame)
    squeeze = y.ndim == 1
    y2 = y[:, None] if squeeze else y
    dense = np.asarray(interpolate_packed(jnp.asarray(y2), lay.interp_prev_bt, lay.interp_next_bt, lay.interp_w_bt))
    m = lay.mask_bt
    vids = np.asarray(lay.videos, dtype=object)[lay.seg_bt[m]]
    out = dense[m]
    return (out[:, 0] if squeeze else out), vids, lay.frames_bt[m].astype(np.int64)
