#!/usr/bin/python3
"""PyTorch interop check for fastnn's safetensors weights.

Reads a fastnn weights file with its own small safetensors reader (no safetensors package),
loads the weights into torch.nn.LSTM(bidirectional=True, batch_first=True) + torch.nn.Linear,
and checks that the softmax outputs on the first N MNIST test images match fastnn's own
(computed by examples/predict_mnist) within a tolerance.

    /usr/bin/python3 tests/interop/torch_interop.py --mnist-bilstm build/examples/mnist_bilstm \
        --predict build/examples/predict_mnist --data data --work /tmp/interop [--weights W]

Without --weights, it first trains a model briefly (mnist_bilstm --epochs 1 --train-limit
2000 --export-weights). Exit status: 0 match, 1 mismatch or error, 77 skipped (no torch or
numpy, no MNIST files). Use Debian's /usr/bin/python3 (python3-torch, python3-numpy).

Name and layout mapping (docs/weights-format.md):
  bidirectional.forward_lstm.kernel            [F, 4H]  -> lstm.weight_ih_l0          = kernel.T
  bidirectional.forward_lstm.recurrent_kernel  [H, 4H]  -> lstm.weight_hh_l0          = recurrent_kernel.T
  bidirectional.forward_lstm.bias              [4H]     -> lstm.bias_ih_l0 = bias, lstm.bias_hh_l0 = 0
  bidirectional.backward_lstm.*                         -> the same with the _reverse suffix
  dense.kernel [2H, C], dense.bias [C]                  -> linear.weight = kernel.T, linear.bias = bias
Both use the gate order i, f, g (c), o.
"""

import argparse
import json
import os
import subprocess
import sys
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "python"))
from fastnn_safetensors import read_safetensors  # noqa: E402

SKIP = 77




def have_mnist(d):
    return all(
        os.path.exists(os.path.join(d, f)) or os.path.exists(os.path.join(d, f + ".gz"))
        for f in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    )


def run(cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist-bilstm", required=True)
    ap.add_argument("--predict", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--weights", help="a fastnn weights file (default: train one briefly)")
    ap.add_argument("--n", type=int, default=1000, help="test images to compare (default 1000)")
    ap.add_argument("--tol", type=float, default=1e-5, help="largest allowed |p_fastnn - p_torch|")
    ap.add_argument("--train-limit", type=int, default=2000)
    args = ap.parse_args()

    try:
        import numpy as np
        import torch
    except ImportError as e:
        print(f"SKIP: {e} (install python3-torch and python3-numpy; run with /usr/bin/python3)")
        return SKIP
    if not have_mnist(args.data):
        print(f"SKIP: no MNIST test files in {args.data} (scripts/fetch-mnist.sh {args.data})")
        return SKIP

    os.makedirs(args.work, exist_ok=True)
    weights = args.weights
    if not weights:
        weights = os.path.join(args.work, "weights.safetensors")
        run([args.mnist_bilstm, "--data", args.data, "--epochs", "1", "--train-limit", str(args.train_limit),
             "--verbose", "2", "--export-weights", weights])
    pred_path = os.path.join(args.work, "predictions.safetensors")
    run([args.predict, weights, args.data, str(args.n), pred_path])

    w, meta = read_safetensors(weights, np)
    pred, _ = read_safetensors(pred_path, np)
    layers = json.loads(meta["fastnn.layers"])
    if meta.get("fastnn.dtype") != "F32":
        print(f"FAIL: expected F32 weights, got {meta.get('fastnn.dtype')}")
        return 1
    if [l["type"] for l in layers] != ["Bidirectional", "Dense"]:
        print(f"FAIL: expected Bidirectional + Dense, got {[l['type'] for l in layers]}")
        return 1
    bi, dense = layers[0]["config"], layers[1]["config"]
    if bi["layer"] != "LSTM" or bi["merge_mode"] != "concat" or bi["layer.recurrent_activation"] != "sigmoid" \
            or bi["layer.return_sequences"] != "false" or dense["activation"] != "softmax":
        print(f"FAIL: torch.nn.LSTM needs a sigmoid recurrent activation, concat, last step only; got {bi}, {dense}")
        return 1

    kf = w["bidirectional.forward_lstm.kernel"]
    features, hidden = kf.shape[0], kf.shape[1] // 4
    classes = w["dense.kernel"].shape[1]
    torch.set_num_threads(2)
    lstm = torch.nn.LSTM(features, hidden, bidirectional=True, batch_first=True)
    linear = torch.nn.Linear(2 * hidden, classes)
    with torch.no_grad():
        for direction, suffix in (("forward_lstm", ""), ("backward_lstm", "_reverse")):
            p = f"bidirectional.{direction}."
            getattr(lstm, "weight_ih_l0" + suffix).copy_(torch.from_numpy(w[p + "kernel"].T.copy()))
            getattr(lstm, "weight_hh_l0" + suffix).copy_(torch.from_numpy(w[p + "recurrent_kernel"].T.copy()))
            getattr(lstm, "bias_ih_l0" + suffix).copy_(torch.from_numpy(w[p + "bias"].copy()))
            getattr(lstm, "bias_hh_l0" + suffix).zero_()
        linear.weight.copy_(torch.from_numpy(w["dense.kernel"].T.copy()))
        linear.bias.copy_(torch.from_numpy(w["dense.bias"].copy()))

        images = pred["images"]
        x = torch.from_numpy(images.astype(np.float32) * np.float32(1.0 / 255.0))
        _, (h_n, _) = lstm(x)  # h_n: [2, N, H], the last step of each direction
        probs = torch.softmax(linear(torch.cat([h_n[0], h_n[1]], dim=1)), dim=1).numpy()

    mine = pred["probabilities"]
    labels = pred["labels"].astype(np.int64)
    diff = np.abs(probs.astype(np.float64) - mine.astype(np.float64))
    agree = float(np.mean(probs.argmax(1) == mine.argmax(1)))
    acc_f = float(np.mean(mine.argmax(1) == labels))
    acc_t = float(np.mean(probs.argmax(1) == labels))
    print(f"{len(labels)} images: max |p_fastnn - p_torch| = {diff.max():.3e} (mean {diff.mean():.3e}, "
          f"tolerance {args.tol:g}); argmax agreement {agree:.4f}; accuracy fastnn {acc_f:.4f}, torch {acc_t:.4f}")
    if not diff.max() <= args.tol:
        i = int(diff.max(axis=1).argmax())
        print(f"FAIL: image {i}: fastnn {mine[i]} torch {probs[i]}")
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
