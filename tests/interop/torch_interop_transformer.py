#!/usr/bin/python3
"""PyTorch interop check of fastnn's Transformer encoder block against torch.nn.TransformerEncoderLayer.

Runs tests/interop/transformer_export (fastnn's side: for each case a weights file of post-norm encoder blocks,
1,000 random inputs with random lengths and fastnn's outputs), reads the files with fastnn's small safetensors
reader (no safetensors package), loads the weights into torch.nn.TransformerEncoderLayer(d, H, ff,
activation="gelu", layer_norm_eps=1e-3, batch_first=True, norm_first=False, dropout=0) (a stack of them in
torch.nn.TransformerEncoder for several blocks) with the mapping of python/fastnn_torch_transformer.py, runs it in
eval mode with src_key_padding_mask (true beyond each sample's length) and checks that every real step agrees
within --tol (the padded steps are not compared: fastnn's attention outputs 0 there, torch an ordinary row, and
torch's nested-tensor path of TransformerEncoder returns 0).

    /usr/bin/python3 tests/interop/torch_interop_transformer.py \
        --export build/tests/transformer_export --work /tmp/interop_transformer

A self-check shows that the comparison can fail: without the key padding mask, with the query and key
projections swapped in in_proj_weight, and with the heads read as the minor axis of Keras's [d, H, hd] kernels,
the outputs must differ by more than 100 tol.

Exit status: 0 every case matches, 1 a mismatch or error, 77 skipped (no torch or numpy). Use Debian's
/usr/bin/python3 (python3-torch, python3-numpy).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "python"))
from fastnn_interop import run_interop  # noqa: E402
from fastnn_safetensors import read_safetensors  # noqa: E402
from fastnn_torch_transformer import MappingError, load_encoder_layer  # noqa: E402

REQUIRED = ["encoder_block", "encoder_stack2"]


def build_encoder(w, meta, np, torch, d, **kw):
    """torch's encoder (one TransformerEncoderLayer, or a TransformerEncoder of `blocks` of them) holding the
    weights `w`, in float64 and eval mode; returns (module, values copied)."""
    blocks, heads, ff = int(meta["blocks"]), int(meta["heads"]), int(meta["ff"])
    eps = float(meta["epsilon"])
    layer = torch.nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation="gelu", layer_norm_eps=eps,
                                             batch_first=True, norm_first=False)
    if blocks == 1:
        module, layers = layer, [layer]
    else:
        module = torch.nn.TransformerEncoder(layer, blocks)  # copies the layer `blocks` times
        layers = list(module.layers)
    copied = sum(load_encoder_layer(l, w, f"enc{b}_", np, torch, **kw) for b, l in enumerate(layers))
    return module.double().eval(), copied


def predict(module, x, lengths, np, torch, masked=True):
    steps = x.shape[1]
    pad = torch.from_numpy(np.arange(steps)[None, :] >= lengths[:, None])
    with torch.no_grad():
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
        return module(xt, src_key_padding_mask=pad if masked else None).numpy()


def real_steps(lengths, steps, np):
    return np.arange(steps)[None, :] < lengths[:, None]  # [N, steps]


def load_case(work, name, np):
    w, _ = read_safetensors(os.path.join(work, name + ".weights.safetensors"), np)
    data, meta = read_safetensors(os.path.join(work, name + ".data.safetensors"), np)
    return w, meta, data["x"], data["lengths"].astype(np.int64), data["y"].astype(np.float64)


def check_case(work, name, np, torch, tol):
    """Returns (ok, worst, message) for one case."""
    w, meta, x, lengths, y = load_case(work, name, np)
    n, steps, d = x.shape
    module, copied = build_encoder(w, meta, np, torch, d)
    in_file = sum(int(a.size) for a in w.values())
    ref = predict(module, x, lengths, np, torch)
    if ref.shape != y.shape:
        return False, float("inf"), f"{name}: fastnn output {list(y.shape)}, torch {list(ref.shape)}"
    real = real_steps(lengths, steps, np)
    diff = np.where(real[..., None], np.abs(ref - y), 0.0)
    worst = float(diff.max())
    msg = (f"{name:16s} N={n:5d} steps={steps} d={d} blocks={meta['blocks']} heads={meta['heads']} ff={meta['ff']} "
           f"parameters={in_file} (copied {copied}) real steps={int(real.sum())} of {real.size} "
           f"max|y|={np.abs(y[real]).max():.3f} max|diff|={worst:.3e}")
    if copied != in_file:
        return False, worst, msg + "  FAIL: the mapping did not copy every tensor of the file exactly once"
    if not worst <= tol:
        i = int(diff.reshape(n, -1).max(axis=1).argmax())
        at = np.unravel_index(int(diff[i].argmax()), diff[i].shape)
        msg += (f"  FAIL (tolerance {tol:g}): sample {i} (length {lengths[i]}) at {tuple(int(a) for a in at)}: "
                f"fastnn {y[i][at]:.8f}, torch {ref[i][at]:.8f}")
        return False, worst, msg
    return True, worst, msg + "  ok"


def self_check(work, np, torch, tol):
    """A wrong mapping or a missing mask must not match."""
    w, meta, x, lengths, y = load_case(work, "encoder_block", np)
    real = real_steps(lengths, x.shape[1], np)
    ok = True
    for what, kw, masked in (("no src_key_padding_mask", {}, False),
                             ("query and key projections swapped", {"qkv_order": (1, 0, 2)}, True),
                             ("heads as the minor axis of the kernels", {"head_major": False}, True)):
        module, _ = build_encoder(w, meta, np, torch, x.shape[2], **kw)
        ref = predict(module, x, lengths, np, torch, masked=masked)
        worst = float(np.abs(ref - y)[real].max())
        print(f"self-check: encoder_block with {what}: max|diff| = {worst:.3e} (must exceed {100 * tol:g})")
        ok = ok and worst > 100 * tol
    return ok


def main():
    return run_interop(__doc__, "transformer_export", REQUIRED, check_case, self_check, (MappingError,), tol_help="|y_fastnn - y_torch| at a real step")


if __name__ == "__main__":
    sys.exit(main())
