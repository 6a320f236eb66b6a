// The anchor: the old thumbnail Lambda's sharp pipeline (rotate, resize inside 400x400, JPEG
// q80), one thread, memory to memory.
// usage: UV_THREADPOOL_SIZE=1 node sharp-thumbnail.js [--decoded] OUT_DIR REPEATS FILE...
// Prints one JSON line per photo: {"file", "cpu_ms": [per repeat], "width", "height"} and
// writes the last output JPEG to OUT_DIR/<file name>.jpg for the SSIM comparison.
// --decoded (the sharp half of scripts/bench-heic's "heif-dec + sharp" anchor): each FILE is
// <photo>.png (or <photo>.jpg, q100) holding pixels heif-convert decoded; they are loaded into
// memory as 8-bit sRGB untimed, so only the thumbnail from pixels is timed, and the result is
// named after <photo>. Alpha is flattened on white, as our decoder does for HEIF.
const fs = require('fs');
const path = require('path');
const sharp = require('sharp');

sharp.concurrency(1);
sharp.cache(false);

// What one timed repeat starts from: the file's bytes, or its decoded pixels.
async function source(file, decoded) {
  if (!decoded) {
    const input = fs.readFileSync(file);
    return { name: path.basename(file), make: () => sharp(input) };
  }
  const { data: pixels, info: raw } = await sharp(fs.readFileSync(file))
    .toColourspace('srgb')
    .raw()
    .toBuffer({ resolveWithObject: true });
  const input = { raw: { width: raw.width, height: raw.height, channels: raw.channels } };
  const alpha = raw.channels === 4 || raw.channels === 2;
  return {
    name: path.basename(file).replace(/\.(png|jpg)$/, ''),
    make: () => {
      const img = sharp(pixels, input);
      return alpha ? img.flatten({ background: '#ffffff' }) : img;
    },
  };
}

async function main() {
  const args = process.argv.slice(2);
  const decoded = args[0] === '--decoded';
  const [outDir, repeatsArg, ...files] = decoded ? args.slice(1) : args;
  const repeats = Number(repeatsArg);
  for (const file of files) {
    let name = path.basename(file);
    try {
      const src = await source(file, decoded);
      name = src.name;
      const cpu = [];
      let out;
      let info;
      for (let i = 0; i < repeats; i++) {
        const before = process.cpuUsage();
        const r = await src.make().rotate().resize(400, 400, { fit: 'inside' }).jpeg({ quality: 80 }).toBuffer({ resolveWithObject: true });
        const used = process.cpuUsage(before);
        cpu.push((used.user + used.system) / 1000);
        out = r.data;
        info = r.info;
      }
      fs.writeFileSync(path.join(outDir, name + '.jpg'), out);
      console.log(JSON.stringify({ file: name, cpu_ms: cpu, width: info.width, height: info.height }));
    } catch (e) {
      console.log(JSON.stringify({ file: name, error: String(e.message || e) }));
    }
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
