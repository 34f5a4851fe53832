const ort = require('/tmp/ort-inst/node_modules/onnxruntime-node');
const fs = require('fs');
(async () => {
  const kind = process.argv[2];
  const b = fs.readFileSync(`/tmp/onnxt/${kind}.bin`);
  const h = new Int32Array(b.buffer, b.byteOffset, 4);
  const [n, per, ny, haslens] = h;
  let off = b.byteOffset + 16;
  const x = new Float32Array(b.buffer, off, n * per); off += n * per * 4;
  let lens = null; if (haslens) { lens = new Int32Array(b.buffer, off, n); off += n * 4; }
  const want = new Float32Array(b.buffer, off, ny);
  const dims = fs.readFileSync(`/tmp/onnxt/${kind}.shape`, 'utf8').trim().replace(/[\[\]]/g, '').split(',').map(Number);
  const s = await ort.InferenceSession.create(`/tmp/onnxt/${kind}.onnx`);
  const feeds = { input: new ort.Tensor('float32', Float32Array.from(x), dims) };
  if (lens) feeds.sequence_lens = new ort.Tensor('int32', Int32Array.from(lens), [n]);
  const y = (await s.run(feeds)).output.data;
  let d = 0;
  for (let i = 0; i < y.length; ++i) d = Math.max(d, Math.abs(y[i] - want[i]));
  console.log(`${kind}: ${y.length} outputs (want ${ny}), max abs difference ${d}`);
})().catch(e => { console.error(e.message || e); process.exit(1); });
