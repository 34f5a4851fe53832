#!/usr/bin/python3
"""PyTorch peer of fastnn's examples/lang_id: the same model, split, initial weights and training.

    build/examples/lang_id --epochs 0 --write-split split.tsv --init-weights-out init.safetensors
    /usr/bin/python3 bench/lang_id_peer.py --split split.tsv --init-weights init.safetensors \
        --epochs 5 --threads 1 --json torch.json
    # the same with --model transformer given to both

Use Debian's python3-torch through /usr/bin/python3. The data is not re-derived here: --split is
the TSV file that `lang_id --write-split` wrote (lines `train|val<TAB>label<TAB>word`); a word is
its UTF-8 bytes, token = byte + 1, padded with 0 at the end to --maxlen steps.

Model: nn.Embedding(257, E) -> nn.GRU(E, H, bidirectional=True, batch_first=True) over
pack_padded_sequence(lengths, enforce_sorted=False) -> concat(h_n[0], h_n[1]) [B, 2H] ->
nn.Linear(2H, 9), i.e. fastnn's Embedding(mask_zero) -> Bidirectional(GRU(H)) -> Dense(9, softmax)
with the softmax folded into CrossEntropyLoss. Adam (betas 0.9, 0.999, eps 1e-7 as Keras),
batch 128, reshuffled each epoch, the last partial batch used; validation in batches of 128.

--init-weights loads fastnn's safetensors file (read here with struct/json/numpy, no safetensors
package). Mapping (Keras GRU gate order z, r, h; torch r, z, n; reset_after=True == torch's GRU):
  embedding.embeddings [257, E]                     -> embedding.weight
  bidirectional.forward_gru.kernel [E, 3H]          -> gru.weight_ih_l0 = [k_r | k_z | k_h].T
  bidirectional.forward_gru.recurrent_kernel [H,3H] -> gru.weight_hh_l0 (same permutation)
  bidirectional.forward_gru.bias [2, 3H]            -> gru.bias_ih_l0 = row 0, gru.bias_hh_l0 = row 1 (permuted)
  bidirectional.backward_gru.*                      -> the same with the _reverse suffix
  dense.kernel [2H, 9], dense.bias [9]              -> linear.weight = kernel.T, linear.bias

Without --init-weights, --init chooses the random initial weights, drawn from --seed: `keras` (the default)
Keras's initialisation: uniform(-0.05, 0.05) embedding, glorot_uniform kernels, orthogonal
recurrent kernels, zero biases; `torch` PyTorch's own default initialisation of nn.Embedding
(N(0, 1), padding row 0 zero), nn.GRU (every weight and bias U(-1/sqrt(H), 1/sqrt(H))) and
nn.Linear (kaiming_uniform(a=sqrt(5)) weight, U(-1/sqrt(2H), 1/sqrt(2H)) bias), left untouched
(lang_id --init torch draws from the same distributions).

--model transformer (lang_id --model transformer; d = --embed-dim, default 64): nn.Embedding(257, d) plus a
learned position table nn.Embedding(maxlen, d) at positions 0..maxlen-1 -> nn.TransformerEncoder of --blocks
nn.TransformerEncoderLayer(d, --heads, --ff, dropout=--dropout, activation="gelu", layer_norm_eps=1e-3,
batch_first=True, norm_first=False) with src_key_padding_mask (true beyond each word's length) -> the mean over
the real steps -> nn.Linear(d, 9). --init-weights mapping: embedding.embeddings -> embedding.weight,
position_embedding.embeddings -> position.weight, the blocks enc<b>_* -> encoder.layers[b] as in
python/fastnn_torch_transformer.py (docs/weights-format.md), dense.kernel.T / dense.bias -> fc. Without
--init-weights the transformer takes --init torch only (PyTorch's own defaults, untouched).

It prints the BLAS library torch runs on and, for OpenBLAS, the kernel it chose (`BLAS ...` line,
"blas" in --json); OpenBLAS reads OPENBLAS_CORETYPE at load time, so run the peer without it to
get the kernel OpenBLAS picks for the CPU (bench/lang-id-init-seeds does).

Output: a CONFIG line, then one line per epoch in the format of lang_id's:
    EPOCH 1 train_s=2.345 eval_s=0.123 loss=1.234567 acc=0.612345 val_loss=0.912345 val_acc=0.701234
and `final: ...`; before training, `initial: val_loss X val_acc Y` of the untrained model (the
same numbers as lang_id's when started from its --init-weights-out). --json FILE writes a
summary with the same keys as lang_id's --json.
"""

import argparse
import json
import os
import platform
import sys
import time
import warnings

CLASSES = 9
LANGUAGES = ["english", "german", "french", "spanish", "italian", "portuguese", "dutch", "swedish", "polish"]


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--split", required=True, help="TSV file written by lang_id --write-split")
    p.add_argument("--init-weights", default="", help="fastnn safetensors file to start from (lang_id --init-weights-out)")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--maxlen", type=int, default=20, help="padded length; every word must fit (as lang_id's --maxlen)")
    p.add_argument("--model", choices=("bigru", "transformer"), default="bigru")
    p.add_argument("--units", type=int, default=64, help="bigru: GRU units per direction")
    p.add_argument("--embed-dim", type=int, default=0,
                   help="byte embedding size, the transformer's width d (0: 32 for bigru, 64 for transformer)")
    p.add_argument("--heads", type=int, default=4, help="transformer: attention heads")
    p.add_argument("--ff", type=int, default=128, help="transformer: feed-forward width")
    p.add_argument("--blocks", type=int, default=2, help="transformer: encoder layers")
    p.add_argument("--dropout", type=float, default=0.1, help="transformer: dropout rate")
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (and OpenMP/BLAS threads)")
    p.add_argument("--seed", type=int, default=42, help="shuffling (and the weights without --init-weights)")
    p.add_argument("--init", choices=("keras", "torch"), default="keras",
                   help="random initial weights without --init-weights: keras (Keras's initialisers) or torch "
                        "(PyTorch's own defaults, untouched) (default: %(default)s)")
    p.add_argument("--json", default="", help="write a JSON summary")
    p.add_argument("--no-shuffle", action="store_true", help="train in the split file's order every epoch")
    a = p.parse_args(argv)
    if a.embed_dim == 0:
        a.embed_dim = 64 if a.model == "transformer" else 32
    if (a.epochs < 0 or a.threads < 1 or a.batch_size < 1 or a.maxlen < 1 or a.units < 1 or a.embed_dim < 1
            or a.heads < 1 or a.ff < 1 or a.blocks < 1 or not 0 <= a.dropout < 1):
        p.error("--epochs must be >= 0; --threads, --batch-size, --maxlen, --units, --embed-dim, --heads, --ff and "
                "--blocks >= 1; --dropout in [0, 1)")
    if a.model == "transformer" and a.embed_dim % a.heads:
        p.error(f"--embed-dim {a.embed_dim} is not divisible by --heads {a.heads}")
    if a.model == "transformer" and not a.init_weights and a.init != "torch":
        p.error("--model transformer needs --init-weights (lang_id --model transformer --init-weights-out) or "
                "--init torch (PyTorch's own defaults)")
    if a.init_weights and a.init == "torch":
        p.error("--init torch and --init-weights exclude each other (the weights file gives the initial weights)")
    return a


ARGS = parse_args(sys.argv[1:])
# Thread counts must be fixed before torch loads its OpenMP and BLAS runtimes.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python"))
from fastnn_safetensors import read_safetensors  # noqa: E402
from fastnn_peer_env import blas_info, cpu_model, num  # noqa: E402
from fastnn_torch_transformer import load_encoder_layer  # noqa: E402

# TransformerEncoder's inference path with a padding mask warns once that nested tensors are a prototype.
warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors")



def die(msg):
    print(f"lang_id_peer: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


# ---- data ------------------------------------------------------------------------------------
def read_split(path, maxlen):
    """Returns {"train": (tokens int64 [N, maxlen], lengths int64 [N], labels int64 [N]), "val": ...}."""
    rows = {"train": [], "val": []}
    try:
        f = open(path, "rb")
    except OSError as e:
        die(f"{path}: {e.strerror} (write it with lang_id --write-split {path})")
    with f:
        for n, line in enumerate(f, 1):
            line = line.rstrip(b"\n")
            parts = line.split(b"\t")
            if len(parts) != 3 or parts[0] not in (b"train", b"val"):
                die(f"{path}:{n}: expected train|val<TAB>label<TAB>word, got {line[:60]!r}")
            try:
                label = int(parts[1])
            except ValueError:
                die(f"{path}:{n}: label {parts[1]!r} is not an integer")
            word = parts[2]
            if not 0 <= label < CLASSES:
                die(f"{path}:{n}: label {label} is not in [0, {CLASSES})")
            if not 1 <= len(word) <= maxlen:
                die(f"{path}:{n}: word of {len(word)} bytes; --maxlen is {maxlen}")
            rows[parts[0].decode()].append((label, word))
    out = {}
    for split, items in rows.items():
        if not items:
            die(f"{path}: no {split} lines")
        tokens = np.zeros((len(items), maxlen), dtype=np.int64)
        lengths = np.empty(len(items), dtype=np.int64)
        labels = np.empty(len(items), dtype=np.int64)
        for i, (label, word) in enumerate(items):
            tokens[i, :len(word)] = np.frombuffer(word, dtype=np.uint8).astype(np.int64) + 1
            lengths[i] = len(word)
            labels[i] = label
        out[split] = (torch.from_numpy(tokens), torch.from_numpy(lengths), torch.from_numpy(labels))
    return out




# ---- model -----------------------------------------------------------------------------------
class LangId(nn.Module):
    def __init__(self, embed_dim, units, classes=CLASSES, vocab=257):
        super().__init__()
        self.embedding = nn.Embedding(vocab, embed_dim, padding_idx=0)
        self.gru = nn.GRU(embed_dim, units, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * units, classes)
        self.units = units

    def keras_init(self):
        with torch.no_grad():
            nn.init.uniform_(self.embedding.weight, -0.05, 0.05)
            h = self.units
            for name, p in self.gru.named_parameters():
                if name.startswith("weight_ih"):
                    # Keras: glorot_uniform on the whole kernel [F, 3H]
                    bound = (6.0 / (p.shape[1] + p.shape[0])) ** 0.5
                    nn.init.uniform_(p, -bound, bound)
                elif name.startswith("weight_hh"):
                    # Keras: orthogonal on the whole recurrent kernel [H, 3H]
                    q = torch.empty(h, 3 * h)
                    nn.init.orthogonal_(q)
                    p.copy_(q.t())
                else:
                    p.zero_()
            nn.init.xavier_uniform_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def load_fastnn(self, path):
        w, meta = read_safetensors(path, np)
        h = self.units

        def get(name, shape):
            if name not in w:
                die(f"{path}: no tensor '{name}' (has: {', '.join(sorted(w))})")
            a = w[name]
            if list(a.shape) != list(shape):
                die(f"{path}: '{name}' is {list(a.shape)}, expected {list(shape)} (same --units/--embed-dim as lang_id?)")
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        def zrh_to_rzn(t):  # columns (last axis) z | r | h -> r | z | n
            return torch.cat((t[..., h:2 * h], t[..., 0:h], t[..., 2 * h:3 * h]), dim=-1)

        e = self.embedding.weight.shape[1]
        with torch.no_grad():
            self.embedding.weight.copy_(get("embedding.embeddings", [257, e]))
            for fastnn_dir, suffix in (("forward_gru", ""), ("backward_gru", "_reverse")):
                pre = f"bidirectional.{fastnn_dir}."
                k = get(pre + "kernel", [e, 3 * h])
                rk = get(pre + "recurrent_kernel", [h, 3 * h])
                b = get(pre + "bias", [2, 3 * h])
                getattr(self.gru, "weight_ih_l0" + suffix).copy_(zrh_to_rzn(k).t())
                getattr(self.gru, "weight_hh_l0" + suffix).copy_(zrh_to_rzn(rk).t())
                getattr(self.gru, "bias_ih_l0" + suffix).copy_(zrh_to_rzn(b[0]))
                getattr(self.gru, "bias_hh_l0" + suffix).copy_(zrh_to_rzn(b[1]))
            self.fc.weight.copy_(get("dense.kernel", [2 * h, CLASSES]).t())
            self.fc.bias.copy_(get("dense.bias", [CLASSES]))
        return meta

    def forward(self, tokens, lengths):
        x = self.embedding(tokens)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h_n = self.gru(packed)  # [2, B, H]: forward final, backward final (in input order)
        return self.fc(torch.cat((h_n[0], h_n[1]), dim=1))


class LangIdTransformer(nn.Module):
    """Embedding + learned positions -> TransformerEncoder (post-norm, gelu) -> masked mean -> Linear."""

    def __init__(self, d, heads, ff, blocks, dropout, maxlen, classes=CLASSES, vocab=257):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d, padding_idx=0)
        self.position = nn.Embedding(maxlen, d)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=dropout, activation="gelu", layer_norm_eps=1e-3,
                                           batch_first=True, norm_first=False)
        self.encoder = nn.TransformerEncoder(layer, blocks)
        self.fc = nn.Linear(d, classes)

    def load_fastnn(self, path):
        w, meta = read_safetensors(path, np)
        d = self.embedding.weight.shape[1]

        def get(name, shape):
            if name not in w:
                die(f"{path}: no tensor '{name}' (has: {', '.join(sorted(w))})")
            a = w[name]
            if list(a.shape) != list(shape):
                die(f"{path}: '{name}' is {list(a.shape)}, expected {list(shape)} (same --embed-dim/--maxlen as "
                    f"lang_id?)")
            return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

        with torch.no_grad():
            self.embedding.weight.copy_(get("embedding.embeddings", list(self.embedding.weight.shape)))
            self.position.weight.copy_(get("position_embedding.embeddings", list(self.position.weight.shape)))
            copied = self.embedding.weight.numel() + self.position.weight.numel()
            for b, layer in enumerate(self.encoder.layers):
                copied += load_encoder_layer(layer, w, f"enc{b}_", np, torch)
            self.fc.weight.copy_(get("dense.kernel", [d, CLASSES]).t())
            self.fc.bias.copy_(get("dense.bias", [CLASSES]))
            copied += self.fc.weight.numel() + self.fc.bias.numel()
        in_file = sum(int(a.size) for a in w.values())
        if copied != in_file:
            die(f"{path}: the model took {copied} of the file's {in_file} values (same --blocks as lang_id?)")
        return meta

    def forward(self, tokens, lengths):
        steps = tokens.shape[1]
        pad = torch.arange(steps)[None, :] >= lengths[:, None]  # [B, T], true at padded steps
        x = self.embedding(tokens) + self.position.weight[:steps]
        h = self.encoder(x, src_key_padding_mask=pad)
        # In eval mode torch's nested-tensor path returns only the batch's longest length of steps (zeros beyond
        # each word's length); in training all `steps`.
        real = (~pad[:, :h.shape[1]]).unsqueeze(-1).to(h.dtype)
        return self.fc((h * real).sum(1) / lengths[:, None].to(h.dtype))


# ---- training --------------------------------------------------------------------------------
def main():
    a = ARGS
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)

    data = read_split(a.split, a.maxlen)
    xtr, ltr, ytr = data["train"]
    xva, lva, yva = data["val"]

    # PyTorch's default initialisation, drawn from torch.manual_seed(--seed)
    if a.model == "transformer":
        model = LangIdTransformer(a.embed_dim, a.heads, a.ff, a.blocks, a.dropout, a.maxlen)
    else:
        model = LangId(a.embed_dim, a.units)
    if a.init_weights:
        try:
            model.load_fastnn(a.init_weights)
        except (OSError, ValueError, KeyError) as e:
            die(f"--init-weights {a.init_weights}: {e}")
        init = a.init_weights
    elif a.init == "torch":
        init = "torch-defaults random"
    else:
        model.keras_init()
        init = "keras-style random"
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, 0.999), eps=1e-7)
    loss_fn = nn.CrossEntropyLoss()
    nparams = sum(p.numel() for p in model.parameters())
    cpu, cores = cpu_model(), os.cpu_count()
    print(f"machine: {cpu}, {cores} cores", flush=True)
    print(f"CONFIG torch={torch.__version__} numpy={np.__version__} python={platform.python_version()} "
          f"threads={torch.get_num_threads()} params={nparams} train={xtr.shape[0]} val={xva.shape[0]} "
          f"batch={a.batch_size} lr={a.lr} seed={a.seed} init={init} model={a.model}", flush=True)
    blas = blas_info()
    print(f"BLAS core={blas['core'] or 'unknown'} config={blas['config'] or 'not OpenBLAS'} "
          f"libraries={','.join(blas['libraries']) or 'none found'} "
          f"env={' '.join(f'{k}={v}' for k, v in blas['env'].items()) or 'no OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE'}",
          flush=True)

    def evaluate():
        model.eval()
        vloss, vcorrect = 0.0, 0
        with torch.no_grad():
            for begin in range(0, xva.shape[0], bs):
                yb = yva[begin:begin + bs]
                logits = model(xva[begin:begin + bs], lva[begin:begin + bs])
                vloss += loss_fn(logits, yb).item() * yb.shape[0]
                vcorrect += (logits.argmax(1) == yb).sum().item()
        return vloss / xva.shape[0], vcorrect / xva.shape[0]

    history = []
    n, bs = xtr.shape[0], a.batch_size
    # the untrained model, as lang_id prints it (equal numbers: same weights, same function)
    init_vl, init_va = evaluate()
    print(f"initial: val_loss {init_vl:.6f} val_acc {init_va:.6f}", flush=True)
    for epoch in range(1, a.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        perm = torch.arange(n) if a.no_shuffle else torch.randperm(n, generator=gen)
        loss_sum, correct = 0.0, 0
        for begin in range(0, n, bs):
            idx = perm[begin:begin + bs]
            yb = ytr[idx]
            opt.zero_grad(set_to_none=True)
            logits = model(xtr[idx], ltr[idx])
            loss = loss_fn(logits, yb)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * idx.shape[0]
            correct += (logits.detach().argmax(1) == yb).sum().item()
        t1 = time.perf_counter()
        vl, va = evaluate()
        t2 = time.perf_counter()
        e = {"epoch": epoch, "train_seconds": t1 - t0, "eval_seconds": t2 - t1, "loss": loss_sum / n,
             "accuracy": correct / n, "val_loss": vl, "val_accuracy": va}
        history.append(e)
        print(f"EPOCH {epoch} train_s={e['train_seconds']:.3f} eval_s={e['eval_seconds']:.3f} loss={e['loss']:.6f} "
              f"acc={e['accuracy']:.6f} val_loss={e['val_loss']:.6f} val_acc={e['val_accuracy']:.6f}", flush=True)

    if a.json:
        summary = {
            "impl": "pytorch",
            "machine": {"cpu": cpu, "cores": cores},
            "config": {"epochs": a.epochs, "batch_size": a.batch_size, "maxlen": a.maxlen, "threads": a.threads,
                       "seed": a.seed, "model": a.model, "embed_dim": a.embed_dim, "lr": a.lr, "split": a.split,
                       **({"heads": a.heads, "ff": a.ff, "blocks": a.blocks, "dropout": a.dropout}
                          if a.model == "transformer" else {"units": a.units}),
                       "init_weights": a.init_weights, "init": init, "shuffle": not a.no_shuffle,
                       "torch": torch.__version__},
            "blas": blas,
            "languages": LANGUAGES,
            "train_samples": int(xtr.shape[0]),
            "val_samples": int(xva.shape[0]),
            "params": nparams,
            "initial_val_loss": init_vl,
            "initial_val_accuracy": init_va,
            "epochs": [{k: num(v) for k, v in e.items()} for e in history],
            "final_val_accuracy": history[-1]["val_accuracy"] if history else None,
        }
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")
    if history:
        l = history[-1]
        print(f"final: loss {l['loss']:.4f} acc {l['accuracy']:.4f} val_loss {l['val_loss']:.4f} "
              f"val_acc {l['val_accuracy']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
