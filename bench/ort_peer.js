#!/usr/bin/env node
// bench/ort_peer.js: ONNX Runtime's inference on an ONNX model with input "input" [N, 28, 28]
// float, through ORT's Node binding (npm onnxruntime-node): the peer of `onnx_peer run`
// (bench/onnx_peer.cpp), driven by bench/onnx-compare.
//
//   node bench/ort_peer.js MODEL.onnx [--threads T] [--calls N] [--batch-calls M] [--ort DIR]
//
// batch 1: N calls of `await session.run({input})` (after a warm-up), cycling through 64
// preallocated one-sample tensors; p50 and p99 of the per-call times in microseconds.
// batch 128: M calls cycling through 4 preallocated batches; samples/s from the median call.
// Inputs are uniform in [0, 1). Session options: ORT's fastest CPU setting, T intra-op threads
// (see `options` below). Times are taken with process.hrtime.bigint() around the awaited call,
// so they include the binding's cost (tensor hand-over, output tensor creation, the promise);
// run it on identity.onnx (onnx_peer export) to measure that cost alone.
//
// Prints one line: `ort model=NAME threads=T batch1_p50_us=... batch1_p99_us=...
// batch128_samples_per_s=... calls=N batch_calls=M`.
'use strict';
const path = require('path');

function usage(msg) {
  if (msg) console.error(`ort_peer: ${msg}`);
  console.error('usage: node bench/ort_peer.js MODEL.onnx [--threads T] [--calls N] [--batch-calls M] [--ort DIR]');
  process.exit(2);
}

function parseArgs(argv) {
  const a = {
    model: null,
    threads: 1,
    calls: 10000,
    batchCalls: 200,
    ort: path.join(__dirname, '..', '.onnxruntime', 'node_modules', 'onnxruntime-node'),
  };
  const positive = (opt, v) => {
    if (!/^[0-9]+$/.test(v || '') || Number(v) <= 0) usage(`${opt} expects a positive integer, got '${v}'`);
    return Number(v);
  };
  for (let i = 0; i < argv.length; ++i) {
    const o = argv[i];
    if (o === '--threads') a.threads = positive(o, argv[++i]);
    else if (o === '--calls') a.calls = positive(o, argv[++i]);
    else if (o === '--batch-calls') a.batchCalls = positive(o, argv[++i]);
    else if (o === '--ort') a.ort = path.resolve(argv[++i] || usage('--ort expects a directory'));
    else if (o.startsWith('--') || a.model) usage(`unexpected argument '${o}'`);
    else a.model = o;
  }
  if (!a.model) usage('no model');
  return a;
}

const STEPS = 28, FEATURES = 28, BIG = 128, SAMPLES = 64, BATCHES = 4;

function randomTensor(ort, n) {
  const x = new Float32Array(n * STEPS * FEATURES);
  for (let i = 0; i < x.length; ++i) x[i] = Math.random();
  return new ort.Tensor('float32', x, [n, STEPS, FEATURES]);
}

function quantile(v, q) {
  const s = Float64Array.from(v).sort();
  return s[Math.round(q * (s.length - 1))];
}

// Per-call microseconds of `calls` awaited calls of run(i), after `warmup` untimed ones.
async function timed(warmup, calls, run) {
  for (let i = 0; i < warmup; ++i) await run(i);
  const us = new Float64Array(calls);
  for (let i = 0; i < calls; ++i) {
    const t0 = process.hrtime.bigint();
    await run(i);
    us[i] = Number(process.hrtime.bigint() - t0) / 1e3;
  }
  return us;
}

async function main() {
  const a = parseArgs(process.argv.slice(2));
  const ort = require(a.ort);
  const options = {
    intraOpNumThreads: a.threads,
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: 'all',
  };
  const session = await ort.InferenceSession.create(a.model, options);
  const one = Array.from({ length: SAMPLES }, () => randomTensor(ort, 1));
  const big = Array.from({ length: BATCHES }, () => randomTensor(ort, BIG));
  let sink = 0;  // keeps the outputs observable
  const t1 = await timed(Math.min(a.calls, 200), a.calls, async (i) => {
    sink += (await session.run({ input: one[i % SAMPLES] })).output.data[0];
  });
  const t128 = await timed(Math.min(a.batchCalls, 5), a.batchCalls, async (i) => {
    sink += (await session.run({ input: big[i % BATCHES] })).output.data[0];
  });
  const f = (x, d) => x.toFixed(d);
  console.log(`ort model=${path.basename(a.model, '.onnx')} threads=${a.threads} ` +
              `batch1_p50_us=${f(quantile(t1, 0.5), 2)} batch1_p99_us=${f(quantile(t1, 0.99), 2)} ` +
              `batch128_samples_per_s=${f(BIG / (quantile(t128, 0.5) * 1e-6), 0)} ` +
              `calls=${a.calls} batch_calls=${a.batchCalls}`);
  if (Number.isNaN(sink)) console.error('ort_peer: the outputs hold NaN');
  await session.release();
}

main().catch((e) => {
  console.error(`ort_peer: ${e && e.message ? e.message : e}`);
  process.exit(1);
});
