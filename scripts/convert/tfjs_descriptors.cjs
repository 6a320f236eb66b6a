// Compute dlib face descriptors with face-api's own FaceRecognitionNet on TensorFlow.js (CPU
// backend), for scripts/convert-dlib to compare against the converted ONNX model.
//
// usage: node tfjs_descriptors.cjs MANIFEST.json WEIGHTS.bin INPUT.f32 N OUTPUT.f32
//   INPUT.f32: N chips, float32 little-endian, NHWC 150x150x3, RGB pixel values 0..255
//   OUTPUT.f32: N x 128 float32 descriptors (face-api's computeFaceDescriptor)
// scripts/convert-dlib copies this file next to the node_modules it installs
// (~/.cache/photo-pipeline/node-convert) and runs it there.
'use strict';
const { readFileSync, writeFileSync } = require('node:fs');
// The CommonJS build of face-api that takes @tensorflow/tfjs from node_modules (no native code).
const faceapi = require('@vladmandic/face-api/dist/face-api.node-wasm.js');

const { tf } = faceapi;

async function main() {
  const [manifestPath, weightsPath, inputPath, nStr, outputPath] = process.argv.slice(2);
  const n = Number(nStr);
  await tf.setBackend('cpu');
  await tf.ready();

  const manifest = JSON.parse(readFileSync(manifestPath, 'utf8'));
  const bin = readFileSync(weightsPath);
  const buffer = bin.buffer.slice(bin.byteOffset, bin.byteOffset + bin.byteLength);
  const weightMap = tf.io.decodeWeights(buffer, manifest[0].weights);

  const net = new faceapi.FaceRecognitionNet();
  net.loadFromWeightMap(weightMap);

  const raw = readFileSync(inputPath);
  const input = new Float32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
  if (input.length !== n * 150 * 150 * 3) throw new Error(`input has ${input.length} floats, expected ${n}x150x150x3`);

  const out = new Float32Array(n * 128);
  for (let i = 0; i < n; i += 1) {
    const chip = tf.tensor3d(input.subarray(i * 67500, (i + 1) * 67500), [150, 150, 3], 'float32');
    // eslint-disable-next-line no-await-in-loop
    const d = await net.computeFaceDescriptor(chip);
    out.set(d, i * 128);
    chip.dispose();
  }
  writeFileSync(outputPath, Buffer.from(out.buffer));
  console.error(`tfjs ${tf.version.tfjs} backend=${tf.getBackend()} face-api ${faceapi.version}: ${n} descriptors`);
}

main().catch((e) => { console.error(e); process.exit(1); });
