"""onnx.checker (Debian's python3-onnx) on every model of DIR/manifest.json, plus what the export
promises: opset 17 or newer, an "input" whose first dimension is symbolic (dynamic batch), and a
"sequence_lens" input exactly for the models that take lengths; for a graph model, the inputs and
outputs its manifest entry names (each input's batch symbolic, its lengths input where listed). Exits 77 (ctest skip) when the
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


def check(path, lengths, entry=None):
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < 17:
        raise ValueError(f"opset {opset} < 17")
    inputs = {i.name: i for i in model.graph.input}
    graph = entry is not None and "inputs" in entry
    names = [i["name"] for i in entry["inputs"]] if graph else ["input"]
    for name in names:
        if name not in inputs:
            raise ValueError(f"no graph input '{name}' (inputs: {list(inputs)})")
        batch = inputs[name].type.tensor_type.shape.dim[0]
        if not batch.dim_param or batch.HasField("dim_value"):
            raise ValueError(f"the batch dimension of '{name}' is not symbolic")
    if graph:
        want = set(names) | {i["lens_name"] for i in entry["inputs"] if "lens_name" in i}
        if set(inputs) != want:
            raise ValueError(f"graph inputs {sorted(inputs)}, expected {sorted(want)}")
        outputs = [o.name for o in model.graph.output]
        if outputs != [o["name"] for o in entry["outputs"]]:
            raise ValueError(f"graph outputs {outputs}, expected {[o['name'] for o in entry['outputs']]}")
    elif lengths is not None and ("sequence_lens" in inputs) != lengths:
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
        manifest = json.load(open(os.path.join(d, "manifest.json")))
        cases = [(os.path.join(d, m["name"] + ".onnx"), m["lengths"], m) for m in manifest]
    cases += [(p, None, None) for p in sys.argv[2:]]
    failed = 0
    for path, lengths, entry in cases:
        try:
            opset, ops = check(path, lengths, entry)
            print(f"ok   {os.path.basename(path):28} opset {opset}: {' '.join(ops)}")
        except Exception as e:  # noqa: BLE001 (any checker or load failure fails the test)
            failed += 1
            print(f"FAIL {path}: {type(e).__name__}: {e}")
    print(f"onnx {onnx.__version__}: {len(cases) - failed} of {len(cases)} files accepted by onnx.checker (full_check)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
