// node ort_check.js DIR ORT_NODE_DIR [TOLERANCE]
// Runs every model of DIR/manifest.json (written by test_onnx_export's OnnxModels.Write) in ONNX
// Runtime (the onnxruntime-node package in ORT_NODE_DIR) on its recorded inputs and compares the
// output with fastnn's predict: the largest absolute difference must be within TOLERANCE
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
      const x = readTyped(`${base}.x.f32`, Float32Array);
      const want = readTyped(`${base}.y.f32`, Float32Array);
      if (x.length !== count(m.x_shape) || want.length !== count(m.y_shape))
        throw new Error(`the recorded inputs or outputs do not match the manifest's shapes`);
      const session = await ort.InferenceSession.create(`${base}.onnx`,
        { intraOpNumThreads: 1, interOpNumThreads: 1, graphOptimizationLevel: 'all' });
      const feeds = { input: new ort.Tensor('float32', x, m.x_shape) };
      if (m.lengths) feeds.sequence_lens = new ort.Tensor('int32', readTyped(`${base}.lens.i32`, Int32Array), [m.x_shape[0]]);
      const out = (await session.run(feeds)).output;
      if (out.dims.join(',') !== m.y_shape.join(','))
        throw new Error(`ONNX Runtime's output is [${out.dims}], fastnn's [${m.y_shape}]`);
      let worst = 0, at = 0;
      for (let i = 0; i < want.length; ++i) {
        const d = Math.abs(out.data[i] - want[i]);
        if (!(d <= worst)) { worst = d; at = i; }  // also catches NaN
      }
      const ok = worst <= tol;
      if (!ok) ++failed;
      console.log(`${ok ? 'ok  ' : 'FAIL'} ${m.name.padEnd(24)} ${m.layers.padEnd(60)} ${m.x_shape[0]} inputs, ` +
                  `${want.length} outputs, max |ORT - fastnn| = ${worst.toExponential(2)}` +
                  (ok ? '' : ` at output ${at} (ORT ${out.data[at]}, fastnn ${want[at]}; tolerance ${tol})`));
    } catch (e) {
      ++failed;
      console.log(`FAIL ${m.name}: ${e.message || e}`);
    }
  }
  console.log(`${manifest.length - failed} of ${manifest.length} models match fastnn's predict within ${tol} ` +
              `in ONNX Runtime ${ort.env && ort.env.versions ? JSON.stringify(ort.env.versions) : ''}`);
  process.exit(failed ? 1 : 0);
})().catch((e) => { console.error(e.message || e); process.exit(1); });
