#!/usr/bin/python3
"""PyTorch interop check for fastnn's graph models (model/graph.hpp): residual recurrent graphs.

Runs tests/interop/graph_export (fastnn's side: for each case a weights file with its fastnn.graph record, 1,000
random inputs and fastnn's outputs), reads the files with fastnn's small safetensors reader (no safetensors
package), rebuilds each graph as a torch.nn.Module (GraphModule below: one torch module per fastnn layer, called
once per node of the recorded graph, so a shared layer is one module called twice), loads the safetensors tensors
into it by their names and checks that the outputs agree within --tol.

    /usr/bin/python3 tests/interop/torch_interop_graph.py \
        --export build/tests/graph_export --work /tmp/interop_graph

Exit status: 0 every case matches, 1 a mismatch or error, 77 skipped (no torch or numpy). Use Debian's
/usr/bin/python3 (python3-torch, python3-numpy).

The recurrent layers and Dense map to torch.nn.GRU / LSTM / RNN / Linear as in torch_interop_recurrent.py (whose
mapping this script reuses); the merge layers are tensor operations: Add, Subtract, Multiply, Average, Maximum,
Minimum elementwise over their inputs in order, Concatenate along its (negative) axis.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "python"))
from fastnn_interop import run_interop  # noqa: E402
from fastnn_safetensors import read_safetensors  # noqa: E402
from torch_interop_recurrent import TorchModel, Unsupported, activate, merge  # noqa: E402


# The cases graph_export must write (it may write more; every case in its manifest is checked).
REQUIRED = ["residual_lstm_bigru", "residual_gru_bilstm_shared"]

MERGES = ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum")


class LayerMapper(TorchModel):
    """torch_interop_recurrent's name and layout mapping, one layer at a time."""

    def __init__(self, weights, np, torch, gru_permute=True):  # noqa: super().__init__ would map a Sequential
        self.np, self.torch, self.w, self.gru_permute = np, torch, weights, gru_permute


def build_graph_module(weights, meta, np, torch, gru_permute=True, residual=True):
    """The torch.nn.Module of the graph recorded in a fastnn weights file. residual=False (the self-check) makes
    every Add return its last input only."""
    if meta.get("fastnn.dtype") != "F32":
        raise Unsupported(f"expected F32 weights, got {meta.get('fastnn.dtype')}")
    if "fastnn.graph" not in meta:
        raise Unsupported("the file holds no fastnn.graph record (a Sequential's file)")
    graph = json.loads(meta["fastnn.graph"])
    mapper = LayerMapper(weights, np, torch, gru_permute)

    class GraphModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.kinds, self.options = {}, {}
            self.mods = torch.nn.ModuleDict()
            for rec in json.loads(meta["fastnn.layers"]):
                name, kind, cfg = rec["name"], rec["type"], rec["config"]
                key = name.replace(".", "_")
                if kind in TorchModel.CELLS:
                    self.mods[key] = mapper.rnn(kind, cfg, [name], "")
                    self.options[name] = mapper.rnn_options(kind, cfg, "concat", False)
                    self.kinds[name] = "rnn"
                elif kind == "Bidirectional":
                    inner = cfg["layer"]
                    sub = {k[len("layer."):]: v for k, v in cfg.items() if k.startswith("layer.")}
                    snake = {"GRU": "gru", "LSTM": "lstm", "SimpleRNN": "simple_rnn"}[inner]
                    self.mods[key] = mapper.rnn(inner, sub, [f"{name}.forward_{snake}", f"{name}.backward_{snake}"],
                                                "_reverse")
                    self.options[name] = mapper.rnn_options(inner, sub, cfg["merge_mode"], True)
                    self.kinds[name] = "rnn"
                elif kind == "Dense":
                    self.mods[key] = mapper.dense(name, cfg)
                    self.options[name] = {"activation": cfg["activation"]}
                    self.kinds[name] = "dense"
                elif kind in MERGES:
                    self.kinds[name] = kind
                elif kind == "Concatenate":
                    axis = int(cfg.get("axis", "-1"))
                    if axis >= 0:
                        raise Unsupported(f"Concatenate on axis {axis} (only negative axes are mapped)")
                    self.options[name] = {"axis": axis}
                    self.kinds[name] = kind
                else:
                    raise Unsupported(f"layer '{name}' of type {kind}")

        def layer(self, name, xs):
            kind = self.kinds[name]
            if kind == "rnn":
                if len(xs) != 1:
                    raise Unsupported(f"'{name}' called on {len(xs)} tensors")
                opt = self.options[name]
                out, state = self.mods[name.replace(".", "_")](xs[0])
                if opt["seq"]:
                    if opt["bidirectional"]:
                        H = out.shape[2] // 2
                        return merge(torch, opt["merge"], out[..., :H], out[..., H:])
                    return out
                h_n = state[0] if opt["lstm"] else state
                return merge(torch, opt["merge"], h_n[0], h_n[1]) if opt["bidirectional"] else h_n[0]
            if kind == "dense":
                return activate(torch, self.options[name]["activation"], self.mods[name.replace(".", "_")](xs[0]))
            if kind == "Concatenate":
                return torch.cat(xs, dim=self.options[name]["axis"])
            if kind == "Add" and not residual:
                return xs[-1]
            y = xs[0]
            for x in xs[1:]:
                y = {"Add": lambda a, b: a + b, "Subtract": lambda a, b: a - b, "Multiply": lambda a, b: a * b,
                     "Average": lambda a, b: a + b, "Maximum": torch.maximum, "Minimum": torch.minimum}[kind](y, x)
            return y / len(xs) if kind == "Average" else y

        def forward(self, *inputs):
            tensors = {i["name"]: x for i, x in zip(graph["inputs"], inputs)}
            calls = {}
            for node in graph["nodes"]:
                name = node["layer"]
                k = calls.get(name, 0)
                calls[name] = k + 1
                tensors[f"{name}[{k}]"] = self.layer(name, [tensors[t] for t in node["inbound"]])
            return [tensors[o] for o in graph["outputs"]]

    return GraphModule().double().eval()


def predict(module, x, np, torch):
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)))[0].numpy()


def check_case(work, name, np, torch, tol):
    """Returns (ok, worst, message) for one case."""
    w, meta = read_safetensors(os.path.join(work, name + ".weights.safetensors"), np)
    d, _ = read_safetensors(os.path.join(work, name + ".data.safetensors"), np)
    x, y = d["x"], d["y"].astype(np.float64)
    module = build_graph_module(w, meta, np, torch)
    # Every tensor of the file is one parameter of the torch module (the names stay readable).
    loaded = sum(int(p.numel()) for p in module.parameters())
    in_file = sum(int(a.size) for a in w.values())
    ref = predict(module, x, np, torch)
    n = x.shape[0]
    if ref.shape != y.shape:
        return False, float("inf"), f"{name}: fastnn output {list(y.shape)}, torch {list(ref.shape)}"
    diff = np.abs(ref - y)
    worst = float(diff.max())
    msg = (f"{name:28s} N={n:5d} y{list(y.shape)[1:]!s:8s} parameters={in_file} (torch {loaded}) "
           f"max|y|={np.abs(y).max():.3f} max|diff|={worst:.3e}")
    if loaded < in_file:
        return False, worst, msg + "  FAIL: the torch module holds fewer parameters than the file"
    if not worst <= tol:
        i = int(diff.reshape(n, -1).max(axis=1).argmax())
        at = np.unravel_index(int(diff[i].argmax()), diff[i].shape)
        msg += (f"  FAIL (tolerance {tol:g}): sample {i} at {tuple(int(a) for a in at)}: "
                f"fastnn {y[i][at]:.8f}, torch {ref[i][at]:.8f}")
        return False, worst, msg
    return True, worst, msg + "  ok"


def self_check(work, np, torch, tol):
    """The comparison can fail: without the residual connection, and with the GRU gates unpermuted, the outputs
    must differ."""
    ok = True
    for name, what, permute, residual in (("residual_lstm_bigru", "the residual Add dropped", True, False),
                                          ("residual_lstm_bigru", "torch's GRU gate order unpermuted", False, True)):
        w, meta = read_safetensors(os.path.join(work, name + ".weights.safetensors"), np)
        d, _ = read_safetensors(os.path.join(work, name + ".data.safetensors"), np)
        module = build_graph_module(w, meta, np, torch, gru_permute=permute, residual=residual)
        worst = float(np.abs(predict(module, d["x"], np, torch) - d["y"].astype(np.float64)).max())
        print(f"self-check: {name} with {what}: max|diff| = {worst:.3e} (must exceed {100 * tol:g})")
        ok = ok and worst > 100 * tol
    return ok


def main():
    return run_interop(__doc__, "graph_export", REQUIRED, check_case, self_check, (Unsupported,), tol_help="|y_fastnn - y_torch|")


if __name__ == "__main__":
    sys.exit(main())
