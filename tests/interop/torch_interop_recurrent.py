#!/usr/bin/python3
"""PyTorch interop check for fastnn's recurrent layers (GRU, SimpleRNN, LSTM, Bidirectional,
Embedding, Dense), with and without per-sample lengths.

Runs tests/interop/recurrent_export (fastnn's side: for each case a weights file, random inputs,
lengths and fastnn's outputs), reads the files with its own small safetensors reader (no
safetensors package), re-creates each model from the architecture recorded in the weights file
with torch.nn.GRU / torch.nn.RNN / torch.nn.LSTM / torch.nn.Embedding / torch.nn.Linear
(batch_first=True, float64), and checks that the outputs agree within --tol.

    /usr/bin/python3 tests/interop/torch_interop_recurrent.py \
        --export build/tests/recurrent_export --work /tmp/interop_recurrent

Exit status: 0 every case matches, 1 a mismatch or error, 77 skipped (no torch or numpy). Use
Debian's /usr/bin/python3 (python3-torch, python3-numpy).

Name and layout mapping (docs/weights-format.md, "PyTorch: recurrent layers"), for a layer
named P (`gru`, `bidirectional.forward_gru`, ...); the backward half of a Bidirectional maps
to the parameters with the _reverse suffix:
  GRU (reset_after)  P.kernel [F, 3H], gates z, r, h  -> weight_ih_l0 = kernel[:, [H:2H, 0:H, 2H:3H]].T
                     P.recurrent_kernel [H, 3H]       -> weight_hh_l0 = the same permutation, .T
                     P.bias [2, 3H]                   -> bias_ih_l0 = bias[0], bias_hh_l0 = bias[1], permuted
                     (torch orders the gates r, z, n)
  SimpleRNN          kernel [F, H], recurrent_kernel [H, H], bias [H]
                                                      -> weight_ih_l0 = kernel.T, weight_hh_l0 = recurrent_kernel.T,
                                                         bias_ih_l0 = bias, bias_hh_l0 = 0; nonlinearity tanh or relu
  LSTM               kernel [F, 4H], recurrent_kernel [H, 4H], bias [4H], gates i, f, c, o (torch: i, f, g, o)
                                                      -> weight_ih_l0 = kernel.T, weight_hh_l0 = recurrent_kernel.T,
                                                         bias_ih_l0 = bias, bias_hh_l0 = 0
  Embedding          embeddings [V, E]                -> weight
  Dense              kernel [in, out], bias [out]     -> weight = kernel.T, bias
Semantics: a last-state output is h_n (each sample's state after its last real step; a
Bidirectional's concat is [h_n forward, h_n backward]); with return_sequences the output is
pad_packed_sequence's (zeros at padded steps, the backward half in input order). Variable
lengths run through pack_padded_sequence(..., enforce_sorted=False); an Embedding with
mask_zero gives each sample's length as the number of its ids before the first 0.
"""

import json
import os
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "python"))
from fastnn_interop import run_interop  # noqa: E402
from fastnn_safetensors import read_safetensors  # noqa: E402


# The cases recurrent_export must write (it may write more; every case in its manifest is checked).
REQUIRED = [
    "gru_last", "gru_last_len",
    "bigru_seq", "bigru_seq_len",
    "rnn_tanh_last", "rnn_tanh_last_len",
    "rnn_relu_last", "rnn_relu_last_len",
    "birnn_last", "birnn_last_len",
    "lstm_last", "lstm_last_len",
    "bilstm_seq", "bilstm_seq_len",
    "gru_seq_lstm", "gru_seq_lstm_len",
    "emb_bigru_dense",
]




class Unsupported(Exception):
    """A recorded layer or option that has no torch.nn counterpart."""


class TorchModel:
    """A fastnn model re-created from its weights file with torch.nn modules (float64)."""

    CELLS = {"GRU": 3, "LSTM": 4, "SimpleRNN": 1}

    def __init__(self, weights, meta, np, torch, gru_permute=True):
        self.np, self.torch, self.w = np, torch, weights
        self.gru_permute = gru_permute  # False: the self-check's deliberately wrong GRU mapping
        if meta.get("fastnn.dtype") != "F32":
            raise Unsupported(f"expected F32 weights, got {meta.get('fastnn.dtype')}")
        self.layers = []  # (kind, module, options)
        for rec in json.loads(meta["fastnn.layers"]):
            name, kind, cfg = rec["name"], rec["type"], rec["config"]
            if kind in self.CELLS:
                self.layers.append(("rnn", self.rnn(kind, cfg, [name], ""), self.rnn_options(kind, cfg, "concat", False)))
            elif kind == "Bidirectional":
                inner = cfg["layer"]
                sub = {k[len("layer."):]: v for k, v in cfg.items() if k.startswith("layer.")}
                snake = {"GRU": "gru", "LSTM": "lstm", "SimpleRNN": "simple_rnn"}[inner]
                prefixes = [f"{name}.forward_{snake}", f"{name}.backward_{snake}"]
                mod = self.rnn(inner, sub, prefixes, "_reverse")
                self.layers.append(("rnn", mod, self.rnn_options(inner, sub, cfg["merge_mode"], True)))
            elif kind == "Embedding":
                self.layers.append(("embedding", self.embedding(name, cfg), {"mask_zero": cfg["mask_zero"] == "true"}))
            elif kind == "Dense":
                self.layers.append(("dense", self.dense(name, cfg), {"activation": cfg["activation"]}))
            else:
                raise Unsupported(f"layer '{name}' of type {kind}")

    def t(self, a):
        return self.torch.from_numpy(self.np.ascontiguousarray(a, dtype=self.np.float64))

    def rnn_options(self, kind, cfg, merge, bidirectional):
        if cfg.get("go_backwards") == "true":
            raise Unsupported(f"{kind} with go_backwards outside a Bidirectional")
        return {"seq": cfg["return_sequences"] == "true", "merge": merge, "bidirectional": bidirectional,
                "lstm": kind == "LSTM"}

    def rnn(self, kind, cfg, prefixes, reverse_suffix):
        torch, w = self.torch, self.w
        kernel = w[prefixes[0] + ".kernel"]
        features, gates = kernel.shape
        hidden = gates // self.CELLS[kind]
        bidir = len(prefixes) == 2
        if kind == "GRU":
            if cfg["reset_after"] != "true":
                raise Unsupported("GRU without reset_after (torch.nn.GRU applies the reset gate after the matmul)")
            if cfg["recurrent_activation"] != "sigmoid" or cfg["activation"] != "tanh":
                raise Unsupported(f"GRU activations {cfg['activation']}, {cfg['recurrent_activation']}")
            mod = torch.nn.GRU(features, hidden, batch_first=True, bidirectional=bidir)
        elif kind == "LSTM":
            if cfg["recurrent_activation"] != "sigmoid" or cfg["activation"] != "tanh":
                raise Unsupported(f"LSTM activations {cfg['activation']}, {cfg['recurrent_activation']}")
            mod = torch.nn.LSTM(features, hidden, batch_first=True, bidirectional=bidir)
        else:
            if cfg["activation"] not in ("tanh", "relu"):
                raise Unsupported(f"SimpleRNN activation {cfg['activation']}")
            mod = torch.nn.RNN(features, hidden, nonlinearity=cfg["activation"], batch_first=True, bidirectional=bidir)
        mod = mod.double()
        H = hidden

        def perm(a):  # GRU gate blocks on the last axis: fastnn z, r, h -> torch r, z, n
            if kind != "GRU" or not self.gru_permute:
                return a
            return self.np.concatenate([a[..., H : 2 * H], a[..., 0:H], a[..., 2 * H : 3 * H]], axis=-1)

        with torch.no_grad():
            for prefix, suffix in zip(prefixes, ["", reverse_suffix]):
                k, rk, b = (w[f"{prefix}.{n}"] for n in ("kernel", "recurrent_kernel", "bias"))
                getattr(mod, "weight_ih_l0" + suffix).copy_(self.t(perm(k).T))
                getattr(mod, "weight_hh_l0" + suffix).copy_(self.t(perm(rk).T))
                if kind == "GRU":
                    if b.shape != (2, 3 * H):
                        raise Unsupported(f"{prefix}.bias has shape {list(b.shape)}, expected [2, {3 * H}]")
                    getattr(mod, "bias_ih_l0" + suffix).copy_(self.t(perm(b[0])))
                    getattr(mod, "bias_hh_l0" + suffix).copy_(self.t(perm(b[1])))
                else:
                    getattr(mod, "bias_ih_l0" + suffix).copy_(self.t(b))
                    getattr(mod, "bias_hh_l0" + suffix).zero_()
        return mod

    def embedding(self, name, cfg):
        e = self.w[f"{name}.embeddings"]
        mod = self.torch.nn.Embedding(e.shape[0], e.shape[1]).double()
        with self.torch.no_grad():
            mod.weight.copy_(self.t(e))
        return mod

    def dense(self, name, cfg):
        k = self.w[f"{name}.kernel"]
        use_bias = f"{name}.bias" in self.w
        mod = self.torch.nn.Linear(k.shape[0], k.shape[1], bias=use_bias).double()
        with self.torch.no_grad():
            mod.weight.copy_(self.t(k.T))
            if use_bias:
                mod.bias.copy_(self.t(self.w[f"{name}.bias"]))
        return mod

    def forward(self, x, lengths):
        """x: ndarray [N, steps, F] (or ids [N, steps]); lengths: int ndarray [N] or None.
        Returns (output ndarray, the lengths an Embedding with mask_zero derived or None)."""
        torch, np = self.torch, self.np
        pack = torch.nn.utils.rnn.pack_padded_sequence
        unpack = torch.nn.utils.rnn.pad_packed_sequence
        h = self.t(x)
        lens = None if lengths is None else torch.from_numpy(lengths.astype(np.int64))
        derived = None
        with torch.no_grad():
            for kind, mod, opt in self.layers:
                if kind == "embedding":
                    ids = h.to(torch.int64)
                    if not torch.equal(ids.to(h.dtype), h):
                        raise ValueError("token ids are not integers")
                    if opt["mask_zero"]:
                        zero = ids == 0  # length: the ids before the first 0
                        first = torch.where(zero.any(1), zero.to(torch.int64).argmax(1),
                                            torch.full_like(ids[:, 0], ids.shape[1]))
                        lens = derived = first
                    h = mod(ids)
                elif kind == "rnn":
                    steps = h.shape[1]
                    if lens is None:
                        out, state = mod(h)
                    else:
                        out, state = mod(pack(h, lens, batch_first=True, enforce_sorted=False))
                        out, _ = unpack(out, batch_first=True, total_length=steps)
                    h_n = state[0] if opt["lstm"] else state  # [directions, N, H]
                    if opt["seq"]:
                        if opt["bidirectional"]:
                            H = out.shape[2] // 2
                            h = merge(torch, opt["merge"], out[..., :H], out[..., H:])
                        else:
                            h = out
                    else:
                        h = merge(torch, opt["merge"], h_n[0], h_n[1]) if opt["bidirectional"] else h_n[0]
                        lens = None  # the sequence ends here
                else:  # dense
                    h = activate(torch, opt["activation"], mod(h))
        return h.numpy(), None if derived is None else derived.numpy()


def merge(torch, mode, f, b):
    if mode == "concat":
        return torch.cat([f, b], dim=-1)
    if mode == "sum":
        return f + b
    if mode == "mul":
        return f * b
    if mode == "ave":
        return 0.5 * (f + b)
    raise Unsupported(f"merge mode {mode}")


def activate(torch, name, z):
    fns = {"linear": lambda v: v, "relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
           "softmax": lambda v: torch.softmax(v, dim=-1)}
    if name not in fns:
        raise Unsupported(f"Dense activation {name}")
    return fns[name](z)


def check_case(work, name, np, torch, tol):
    """Returns (ok, message) for one case."""
    w, meta = read_safetensors(os.path.join(work, name + ".weights.safetensors"), np)
    d, dmeta = read_safetensors(os.path.join(work, name + ".data.safetensors"), np)
    x, y = d["x"], d["y"].astype(np.float64)
    lengths = d.get("lengths")
    given = lengths if dmeta.get("lengths") == "given" else None
    ref, derived = TorchModel(w, meta, np, torch).forward(x, given)
    n = x.shape[0]
    if dmeta.get("lengths") == "mask_zero" and (derived is None or not np.array_equal(derived, lengths)):
        return False, f"{name}: the lengths from the zero ids differ from the ones recurrent_export wrote"
    if ref.shape != y.shape:
        return False, f"{name}: fastnn output {list(y.shape)}, torch {list(ref.shape)}"
    diff = np.abs(ref - y)
    worst = float(diff.max())
    msg = (f"{name:24s} N={n:5d} y{list(y.shape)[1:]!s:10s} lengths={dmeta.get('lengths', 'none'):9s} "
           f"max|y|={np.abs(y).max():.3f} max|diff|={worst:.3e}")
    if not worst <= tol:
        i = int(diff.reshape(n, -1).max(axis=1).argmax())
        at = np.unravel_index(int(diff[i].argmax()), diff[i].shape)
        msg += (f"  FAIL (tolerance {tol:g}): sample {i}"
                + (f" (length {int(lengths[i])})" if lengths is not None else "")
                + f" at {tuple(int(a) for a in at)}: fastnn {y[i][at]:.8f}, torch {ref[i][at]:.8f}")
        return False, msg
    return True, msg + "  ok"


def self_check(work, np, torch, tol):
    """The comparison can fail: the GRU without the gate permutation, and a variable-length
    case run at full length, must not match."""
    ok = True
    for name, what, permute, use_lengths in (("gru_last", "torch's gate order unpermuted", False, True),
                                             ("bigru_seq_len", "the lengths ignored", True, False)):
        w, meta = read_safetensors(os.path.join(work, name + ".weights.safetensors"), np)
        d, _ = read_safetensors(os.path.join(work, name + ".data.safetensors"), np)
        lengths = d.get("lengths") if use_lengths else None
        ref, _ = TorchModel(w, meta, np, torch, gru_permute=permute).forward(d["x"], lengths)
        worst = float(np.abs(ref - d["y"].astype(np.float64)).max())
        print(f"self-check: {name} with {what}: max|diff| = {worst:.3e} (must exceed {100 * tol:g})")
        ok = ok and worst > 100 * tol
    return ok


def main():
    return run_interop(__doc__, "recurrent_export", REQUIRED, check_case, self_check, (Unsupported,), tol_help="|y_fastnn - y_torch|")


if __name__ == "__main__":
    sys.exit(main())
