// node ort_check.js DIR ORT_NODE_DIR [TOLERANCE]
// Runs every model of DIR/manifest.json (written by test_onnx_export's OnnxModels.Write) in ONNX
// Runtime (the onnxruntime-node package in ORT_NODE_DIR) on its recorded inputs and compares the
// outputs (every output of a graph model) with fastnn's predict: the largest absolute difference,
// over all outputs, must be within TOLERANCE
// (default 1e-5). Prints one line per model; exits 1 if any model fails to load, run or match.
//
// node ort_check.js --classifier MODEL.onnx ORT_NODE_DIR
// Runs MODEL.onnx (input [N, 28, 28]) on 4 random images: the output must be [4, 10] rows of
// probabilities (the exported mnist_bilstm).
'use strict';
const fs = require('fs');
const path = require('path');

const classifier = process.argv[2] === '--classifier';
const [dir, ortDir, tolArg] = process.argv.slice(classifier ? 3 : 2);
if (!dir || !ortDir) {
  console.error('usage: node ort_check.js DIR ORT_NODE_DIR [TOLERANCE]');
  process.exit(2);
}
const tol = tolArg ? Number(tolArg) : 1e-5;
const ort = require(path.resolve(ortDir));

function readTyped(file, Type) {
  const b = fs.readFileSync(file);
  const copy = new Uint8Array(b.length);
  copy.set(b);
  return new Type(copy.buffer, 0, b.length / Type.BYTES_PER_ELEMENT);
}
const count = (dims) => dims.reduce((a, b) => a * b, 1);

async function checkClassifier(file) {
  const session = await ort.InferenceSession.create(file);
  const x = new Float32Array(4 * 28 * 28).map(() => Math.random());
  const out = (await session.run({ input: new ort.Tensor('float32', x, [4, 28, 28]) })).output;
  if (out.dims.join(',') !== '4,10') throw new Error(`${file}: output [${out.dims}], expected [4,10]`);
  for (let i = 0; i < 4; ++i) {
    const row = out.data.slice(i * 10, i * 10 + 10);
    const sum = row.reduce((a, b) => a + b, 0);
    if (!(Math.abs(sum - 1) < 1e-5) || row.some((p) => !(p >= 0))) throw new Error(`${file}: row ${i} is not a distribution: ${row}`);
  }
  console.log(`ok   ${file}: ONNX Runtime ran it on 4 images, output [4, 10] rows of probabilities`);
}

(async () => {
  if (classifier) return checkClassifier(dir);
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  if (!Array.isArray(manifest) || manifest.length === 0) throw new Error(`${dir}/manifest.json lists no model`);
  let failed = 0;
  for (const m of manifest) {
    const base = path.join(dir, m.name);
    try {
      // A Sequential case: input (and sequence_lens) -> output; a graph case lists its inputs and outputs.
      const inputs = m.inputs || [{ name: 'input', shape: m.x_shape, file: `${m.name}.x.f32`,
        lens_name: m.lengths ? 'sequence_lens' : undefined, lens_file: `${m.name}.lens.i32` }];
      const outputs = m.outputs || [{ name: 'output', shape: m.y_shape, file: `${m.name}.y.f32` }];
      const feeds = {};
      for (const i of inputs) {
        const x = readTyped(path.join(dir, i.file), Float32Array);
        if (x.length !== count(i.shape)) throw new Error(`the recorded input ${i.name} does not match its shape`);
        feeds[i.name] = new ort.Tensor('float32', x, i.shape);
        if (i.lens_name) {
          const lens = readTyped(path.join(dir, i.lens_file), Int32Array);
          feeds[i.lens_name] = new ort.Tensor('int32', lens, [i.shape[0]]);
        }
      }
      const session = await ort.InferenceSession.create(`${base}.onnx`,
        { intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
      const results = await session.run(feeds);
      let worst = 0, at = 0, where = '', total = 0, bad = null;
      for (const o of outputs) {
        const want = readTyped(path.join(dir, o.file), Float32Array);
        if (want.length !== count(o.shape)) throw new Error(`the recorded output ${o.name} does not match its shape`);
        const out = results[o.name];
        if (!out) throw new Error(`ONNX Runtime returned no output '${o.name}'`);
        if (out.dims.join(',') !== o.shape.join(','))
          throw new Error(`ONNX Runtime's output ${o.name} is [${out.dims}], fastnn's [${o.shape}]`);
        total += want.length;
        for (let i = 0; i < want.length; ++i) {
          const d = Math.abs(out.data[i] - want[i]);
          if (!(d <= worst)) { worst = d; at = i; where = o.name; bad = [out.data[i], want[i]]; }  // also catches NaN
        }
      }
      const ok = worst <= tol;
      if (!ok) ++failed;
      const nIn = inputs.length > 1 ? ` (${inputs.length} inputs, ${outputs.length} outputs)` : '';
      console.log(`${ok ? 'ok  ' : 'FAIL'} ${m.name.padEnd(24)} ${m.layers.padEnd(60)} ${inputs[0].shape[0]} inputs, ` +
                  `${total} outputs${nIn}, max |ORT - fastnn| = ${worst.toExponential(2)}` +
                  (ok ? '' : ` at ${where}[${at}] (ORT ${bad[0]}, fastnn ${bad[1]}; tolerance ${tol})`));
    } catch (e) {
      ++failed;
      console.log(`FAIL ${m.name}: ${e.message || e}`);
    }
  }
  console.log(`${manifest.length - failed} of ${manifest.length} models match fastnn's predict within ${tol} ` +
              `in ONNX Runtime ${ort.env && ort.env.versions ? JSON.stringify(ort.env.versions) : ''}`);
  process.exit(failed ? 1 : 0);
})().catch((e) => { console.error(e.message || e); process.exit(1); });
