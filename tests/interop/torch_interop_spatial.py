#!/usr/bin/python3
"""PyTorch interop check for fastnn's spatial layers (Conv1D, Conv2D, the pooling layers,
BatchNormalization, Reshape, Permute, Activation, Flatten, Dense).

Runs tests/interop/spatial_export (fastnn's side: for each model a weights file, 1,000 random
inputs and fastnn's outputs), reads the files with its own small safetensors reader, re-creates
each model from the architecture recorded in the weights file with torch.nn.Conv1d / Conv2d /
BatchNorm1d / BatchNorm2d (eval mode) / Linear and torch.nn.functional padding and pooling
(float64), and checks that the outputs agree within --tol.

    /usr/bin/python3 tests/interop/torch_interop_spatial.py \
        --export build/tests/spatial_export --work /tmp/interop_spatial

Exit status: 0 every case matches, 1 a mismatch or error, 77 skipped (no torch or numpy). Use
Debian's /usr/bin/python3 (python3-torch, python3-numpy).

Mapping (docs/weights-format.md, "PyTorch: spatial layers"). The values stay channels-last
([N, steps, C] or [N, H, W, C]) between layers, as in fastnn; each convolution and pooling
permutes to channels-first and back, so Flatten and Reshape see fastnn's order.
  Conv2D  kernel [kh, kw, C/groups, F] -> Conv2d.weight [F, C/groups, kh, kw] = kernel.permute(3, 2, 0, 1)
  Conv1D  kernel [k, C/groups, F]      -> Conv1d.weight [F, C/groups, k] = kernel.permute(2, 1, 0)
          bias [F] -> bias; strides, dilation_rate, groups as they are; padding=0 in the module
          and the input padded with F.pad: valid none, same (out = ceil(in / s)) with the total
          max((out - 1) s + (k - 1) d + 1 - in, 0) split with the smaller half before, causal
          (k - 1) d zeros before
  MaxPooling     F.pad with -inf, then max_pool1d/2d
  AveragePooling same: the mean over each window's real elements (count_include_pad=False; for
                 asymmetric padding the window sums over zero padding divided by the counts of
                 real elements)
  Global*Pooling mean / amax over the steps (or H and W)
  BatchNormalization gamma, beta, moving_mean, moving_variance -> BatchNorm weight, bias,
                 running_mean, running_var, eps = epsilon, eval(); BatchNorm2d on NCHW,
                 BatchNorm1d on [N, C, L] or [N, C]
  Flatten        reshape(N, -1) of the channels-last values
  Dense          kernel [in, out] -> Linear.weight = kernel.T
"""

import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "python"))
from fastnn_interop import run_interop  # noqa: E402
from fastnn_safetensors import read_safetensors  # noqa: E402


# The cases spatial_export must write (every case in its manifest is checked).
REQUIRED = ["fashion_cnn", "conv1d", "grouped", "misc"]


class Unsupported(Exception):
    """A recorded layer or option that this script does not map."""


def ints(text, n):
    """A Size2 / integer option ("3" or "3,2") as n integers (1-D: the one value)."""
    v = [int(p) for p in str(text).split(",")]
    if n == 1:
        return [v[-1]]
    return v * 2 if len(v) == 1 else v


def window_pads(size, k, s, d, padding):
    """(before, after) of a window over `size` elements, as fastnn and Keras place it."""
    eff = (k - 1) * d + 1
    if padding == "valid":
        return 0, 0
    if padding == "causal":
        return eff - 1, 0
    out = (size + s - 1) // s
    total = max((out - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


class TorchModel:
    """A fastnn model re-created from its weights file with torch.nn modules (float64).
    `wrong`: a deliberately wrong mapping for the self-check ("kernel_hw", "pad_split",
    "flatten_nchw")."""

    def __init__(self, weights, meta, np, torch, wrong=None):
        self.np, self.torch, self.F, self.w, self.wrong = np, torch, torch.nn.functional, weights, wrong
        if meta.get("fastnn.dtype") != "F32":
            raise Unsupported(f"expected F32 weights, got {meta.get('fastnn.dtype')}")
        shape = json.loads(meta["fastnn.input_shape"])
        self.layers = []  # (kind, module or None, options, input shape per sample)
        for rec in json.loads(meta["fastnn.layers"]):
            name, kind, cfg = rec["name"], rec["type"], rec["config"]
            shape = self.add(name, kind, cfg, shape)

    def t(self, a):
        return self.torch.from_numpy(self.np.ascontiguousarray(a, dtype=self.np.float64))

    def add(self, name, kind, cfg, shape):
        """Appends the layer; returns its per-sample output shape."""
        torch, w = self.torch, self.w
        if kind in ("Conv1D", "Conv2D"):
            n = 1 if kind == "Conv1D" else 2
            k = w[f"{name}.kernel"]
            f, cg = k.shape[-1], k.shape[-2]
            groups = int(cfg.get("groups", "1"))
            size = ints(cfg.get("kernel_size", "1"), n)
            strides = ints(cfg.get("strides", "1"), n)
            dil = ints(cfg.get("dilation_rate", "1"), n)
            bias = f"{name}.bias" in w
            cls = torch.nn.Conv1d if n == 1 else torch.nn.Conv2d
            mod = cls(cg * groups, f, size, stride=strides, dilation=dil, groups=groups, bias=bias).double()
            perm = (2, 1, 0) if n == 1 else ((3, 2, 1, 0) if self.wrong == "kernel_hw" else (3, 2, 0, 1))
            with torch.no_grad():
                mod.weight.copy_(self.t(k).permute(*perm))
                if bias:
                    mod.bias.copy_(self.t(w[f"{name}.bias"]))
            spatial = shape[:-1]
            pads = [window_pads(spatial[i], size[i], strides[i], dil[i], cfg.get("padding", "valid")) for i in range(n)]
            if self.wrong == "pad_split":
                pads = [(b, a) for a, b in pads]
            self.layers.append(("conv", mod, {"n": n, "pads": pads, "activation": cfg.get("activation", "linear")}))
            out = [(spatial[i] + sum(pads[i]) - (size[i] - 1) * dil[i] - 1) // strides[i] + 1 for i in range(n)]
            return out + [f]
        if kind in ("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D"):
            n = int(kind[-2])
            size = ints(cfg.get("pool_size", "2"), n)
            strides = ints(cfg.get("strides", "0"), n)
            if strides[0] == 0:
                strides = size
            spatial = shape[:-1]
            pads = [window_pads(spatial[i], size[i], strides[i], 1, cfg.get("padding", "valid")) for i in range(n)]
            self.layers.append(("pool", None, {"n": n, "max": kind.startswith("Max"), "size": size,
                                               "strides": strides, "pads": pads}))
            out = [(spatial[i] + sum(pads[i]) - size[i]) // strides[i] + 1 for i in range(n)]
            return out + [shape[-1]]
        if kind.startswith("Global"):
            self.layers.append(("global", None, {"max": "Max" in kind, "dims": list(range(1, len(shape)))}))
            return [shape[-1]]
        if kind == "BatchNormalization":
            c = shape[-1]
            eps = float(cfg.get("epsilon", "0.001"))
            cls = torch.nn.BatchNorm2d if len(shape) == 3 else torch.nn.BatchNorm1d
            mod = cls(c, eps=eps).double().eval()
            with torch.no_grad():
                mod.weight.copy_(self.t(w[f"{name}.gamma"]) if f"{name}.gamma" in w else torch.ones(c))
                mod.bias.copy_(self.t(w[f"{name}.beta"]) if f"{name}.beta" in w else torch.zeros(c))
                mod.running_mean.copy_(self.t(w[f"{name}.moving_mean"]))
                mod.running_var.copy_(self.t(w[f"{name}.moving_variance"]))
            self.layers.append(("bn", mod, {"rank": len(shape)}))
            return shape
        if kind == "Activation":
            self.layers.append(("activation", None, {"activation": cfg.get("activation", "linear")}))
            return shape
        if kind == "Flatten":
            self.layers.append(("flatten", None, {}))
            return [int(self.np.prod(shape))]
        if kind == "Reshape":
            target = [int(v) for v in cfg["target_shape"].split(",")]
            total = int(self.np.prod(shape))
            if -1 in target:
                known = int(self.np.prod([v for v in target if v != -1]))
                target[target.index(-1)] = total // known
            self.layers.append(("reshape", None, {"shape": target}))
            return target
        if kind == "Permute":
            dims = [int(v) for v in cfg["dims"].split(",")]
            self.layers.append(("permute", None, {"dims": dims}))
            return [shape[d - 1] for d in dims]
        if kind == "Dense":
            k = w[f"{name}.kernel"]
            bias = f"{name}.bias" in w
            mod = torch.nn.Linear(k.shape[0], k.shape[1], bias=bias).double()
            with torch.no_grad():
                mod.weight.copy_(self.t(k.T))
                if bias:
                    mod.bias.copy_(self.t(w[f"{name}.bias"]))
            self.layers.append(("dense", mod, {"activation": cfg.get("activation", "linear")}))
            return [k.shape[1]]
        raise Unsupported(f"layer '{name}' of type {kind}")

    def channels_first(self, h, n):
        return h.permute(0, 2, 1) if n == 1 else h.permute(0, 3, 1, 2)

    def channels_last(self, h, n):
        return h.permute(0, 2, 1) if n == 1 else h.permute(0, 2, 3, 1)

    @staticmethod
    def f_pad(pads):
        """F.pad's argument (last axis first) from per-axis (before, after)."""
        out = []
        for before, after in reversed(pads):
            out += [before, after]
        return out

    def pool(self, h, opt):
        F, torch, n = self.F, self.torch, opt["n"]
        x = self.channels_first(h, n)
        pad = self.f_pad(opt["pads"])
        k, s = opt["size"], opt["strides"]
        if opt["max"]:
            x = F.pad(x, pad, value=float("-inf"))
            y = (F.max_pool1d if n == 1 else F.max_pool2d)(x, k, s)
        elif all(b == a and b <= kk // 2 for (b, a), kk in zip(opt["pads"], k)):
            # symmetric padding: PyTorch's own, not counting it in the mean
            y = (F.avg_pool1d if n == 1 else F.avg_pool2d)(x, k, s, padding=[b for b, _ in opt["pads"]],
                                                          count_include_pad=False)
        else:
            # asymmetric padding: window sums over zero padding / the number of real elements
            avg = F.avg_pool1d if n == 1 else F.avg_pool2d
            area = float(self.np.prod(k))
            sums = avg(F.pad(x, pad), k, s) * area
            counts = avg(F.pad(torch.ones_like(x[:1, :1]), pad), k, s) * area
            y = sums / counts
        return self.channels_last(y, n)

    def forward(self, x):
        torch, F = self.torch, self.F
        h = self.t(x)
        with torch.no_grad():
            for kind, mod, opt in self.layers:
                if kind == "conv":
                    n = opt["n"]
                    y = mod(F.pad(self.channels_first(h, n), self.f_pad(opt["pads"])))
                    h = activate(torch, opt["activation"], self.channels_last(y, n))
                elif kind == "pool":
                    h = self.pool(h, opt)
                elif kind == "global":
                    h = torch.amax(h, dim=opt["dims"]) if opt["max"] else h.mean(dim=opt["dims"])
                elif kind == "bn":
                    if opt["rank"] == 1:
                        h = mod(h)
                    else:
                        n = opt["rank"] - 1
                        h = self.channels_last(mod(self.channels_first(h, n)), n)
                elif kind == "activation":
                    h = activate(torch, opt["activation"], h)
                elif kind == "flatten":
                    if self.wrong == "flatten_nchw" and h.dim() == 4:
                        h = h.permute(0, 3, 1, 2)
                    h = h.reshape(h.shape[0], -1)
                elif kind == "reshape":
                    h = h.reshape(h.shape[0], *opt["shape"])
                elif kind == "permute":
                    h = h.permute(0, *opt["dims"])
                else:  # dense
                    h = activate(torch, opt["activation"], mod(h))
        return h.numpy()


def activate(torch, name, z):
    fns = {"linear": lambda v: v, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
           "softmax": lambda v: torch.softmax(v, dim=-1), "gelu": torch.nn.functional.gelu,
           "swish": torch.nn.functional.silu, "softplus": torch.nn.functional.softplus}
    if name not in fns:
        raise Unsupported(f"activation {name}")
    return fns[name](z)


def load(work, name, np):
    w, meta = read_safetensors(os.path.join(work, name + ".weights.safetensors"), np)
    d, _ = read_safetensors(os.path.join(work, name + ".data.safetensors"), np)
    return w, meta, d["x"], d["y"].astype(np.float64)


def bn_summary(w, np):
    """The spread of the BatchNormalization moving statistics (they must not be 0 and 1)."""
    parts = []
    for key in sorted(k for k in w if k.endswith(".moving_mean")):
        base = key[: -len(".moving_mean")]
        m, v = w[key], w[base + ".moving_variance"]
        parts.append(f"{base}: mean [{m.min():+.3f}, {m.max():+.3f}] var [{v.min():.3f}, {v.max():.3f}]")
    return parts


def check_case(work, name, np, torch, tol):
    """Returns (ok, message) for one case."""
    w, meta, x, y = load(work, name, np)
    ref = TorchModel(w, meta, np, torch).forward(x)
    n = x.shape[0]
    if ref.shape != y.shape:
        return False, f"{name}: fastnn output {list(y.shape)}, torch {list(ref.shape)}"
    for key in (k for k in w if k.endswith(".moving_mean")):
        base = key[: -len(".moving_mean")]
        if np.abs(w[key]).max() < 1e-3 or np.abs(w[base + ".moving_variance"] - 1).max() < 1e-3:
            return False, f"{name}: {base} has trivial moving statistics (train before export)"
    diff = np.abs(ref - y)
    worst = float(diff.max())
    msg = (f"{name:12s} N={n:5d} x{list(x.shape)[1:]!s:13s} y{list(y.shape)[1:]!s:6s} "
           f"max|y|={np.abs(y).max():.3f} max|diff|={worst:.3e}")
    if not worst <= tol:
        i = int(diff.reshape(n, -1).max(axis=1).argmax())
        at = np.unravel_index(int(diff[i].argmax()), diff[i].shape)
        msg += (f"  FAIL (tolerance {tol:g}): sample {i} at {tuple(int(a) for a in at)}: "
                f"fastnn {y[i][at]:.8f}, torch {ref[i][at]:.8f}")
        return False, msg
    for line in bn_summary(w, np):
        msg += f"\n    {line}"
    return True, msg + "\n    ok"


def self_check(work, np, torch, tol):
    """The comparison can fail: a wrong kernel permutation, same padding split the other way and
    a channels-first Flatten must not match."""
    ok = True
    for name, wrong in (("fashion_cnn", "kernel_hw"), ("conv1d", "pad_split"), ("fashion_cnn", "flatten_nchw")):
        w, meta, x, y = load(work, name, np)
        worst = float(np.abs(TorchModel(w, meta, np, torch, wrong=wrong).forward(x) - y).max())
        print(f"self-check: {name} with the wrong mapping {wrong}: max|diff| = {worst:.3e} (must exceed {100 * tol:g})")
        ok = ok and worst > 100 * tol
    return ok


def main():
    return run_interop(__doc__, "spatial_export", REQUIRED, check_case, self_check, (Unsupported,), tol_help="|y_fastnn - y_torch|")


if __name__ == "__main__":
    sys.exit(main())
