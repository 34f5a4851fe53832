// node check.js KIND: runs KIND.onnx in ONNX Runtime on KIND.x.bin, compares with KIND.y.bin
const ort = require('/tmp/ort-inst/node_modules/onnxruntime-node');
const fs = require('fs');
(async () => {
  const kind = process.argv[2];
  const f32 = (b) => new Float32Array(b.buffer, b.byteOffset, b.length / 4);
  const x = f32(fs.readFileSync(`/tmp/onnxt/${kind}.x.bin`));
  const want = f32(fs.readFileSync(`/tmp/onnxt/${kind}.y.bin`));
  const s = await ort.InferenceSession.create(`/tmp/onnxt/${kind}.onnx`);
  const n = x.length / (28 * 28);
  const out = await s.run({ input: new ort.Tensor('float32', x, [n, 28, 28]) });
  const y = out.output.data;
  let d = 0;
  for (let i = 0; i < y.length; ++i) d = Math.max(d, Math.abs(y[i] - want[i]));
  console.log(`${kind}: ${y.length} outputs, max abs difference ${d}`);
})().catch(e => { console.error(e); process.exit(1); });
