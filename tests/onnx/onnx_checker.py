"""onnx.checker (Debian's python3-onnx) on every model of DIR/manifest.json, plus what the export
promises: opset 17 or newer, an "input" whose first dimension is symbolic (dynamic batch), and a
"sequence_lens" input exactly for the models that take lengths. Exits 77 (ctest skip) when the
onnx module is missing, 1 when a model fails.

    python3 onnx_checker.py DIR [EXTRA.onnx ...]     (DIR "-": only the EXTRA files)
"""
import json
import os
import sys

try:
    import onnx
except ImportError:
    print("SKIP: no python3 onnx module (Debian: python3-onnx)")
    sys.exit(77)


def check(path, lengths):
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 17:
        raise ValueError(f"opset {opset} < 17")
    inputs = {i.name: i for i in model.graph.input}
    if "input" not in inputs:
        raise ValueError(f"no graph input 'input' (inputs: {list(inputs)})")
    batch = inputs["input"].type.tensor_type.shape.dim[0]
    if not batch.dim_param or batch.HasField("dim_value"):
        raise ValueError("the batch dimension of 'input' is not symbolic")
    if lengths is not None and ("sequence_lens" in inputs) != lengths:
        raise ValueError(f"sequence_lens input present: {'sequence_lens' in inputs}, expected {lengths}")
    ops = sorted({n.op_type for n in model.graph.node})
    return opset, ops


def main():
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    d = sys.argv[1]
    cases = []
    if d != "-":
        cases = [(os.path.join(d, m["name"] + ".onnx"), m["lengths"]) for m in json.load(open(os.path.join(d, "manifest.json")))]
    cases += [(p, None) for p in sys.argv[2:]]
    failed = 0
    for path, lengths in cases:
        try:
            opset, ops = check(path, lengths)
            print(f"ok   {os.path.basename(path):28} opset {opset}: {' '.join(ops)}")
        except Exception as e:  # noqa: BLE001 (any checker or load failure fails the test)
            failed += 1
            print(f"FAIL {path}: {type(e).__name__}: {e}")
    print(f"onnx {onnx.__version__}: {len(cases) - failed} of {len(cases)} files accepted by onnx.checker (full_check)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
