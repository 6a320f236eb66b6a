// The anchor: the old thumbnail Lambda's sharp pipeline, one thread, memory to memory.
// usage: UV_THREADPOOL_SIZE=1 node sharp-thumbnail.js OUT_DIR REPEATS FILE...
// Prints one JSON line per photo: {"file", "cpu_ms": [per repeat], "width", "height"} and
// writes the last output JPEG to OUT_DIR/<file name>.jpg for the SSIM comparison.
const fs = require('fs');
const path = require('path');
const sharp = require('sharp');

sharp.concurrency(1);
sharp.cache(false);

async function main() {
  const [outDir, repeatsArg, ...files] = process.argv.slice(2);
  const repeats = Number(repeatsArg);
  for (const file of files) {
    const input = fs.readFileSync(file);
    const cpu = [];
    let out;
    let info;
    try {
      for (let i = 0; i < repeats; i++) {
        const before = process.cpuUsage();
        const r = await sharp(input).rotate().resize(400, 400, { fit: 'inside' }).jpeg({ quality: 80 }).toBuffer({ resolveWithObject: true });
        const used = process.cpuUsage(before);
        cpu.push((used.user + used.system) / 1000);
        out = r.data;
        info = r.info;
      }
      fs.writeFileSync(path.join(outDir, path.basename(file) + '.jpg'), out);
      console.log(JSON.stringify({ file: path.basename(file), cpu_ms: cpu, width: info.width, height: info.height }));
    } catch (e) {
      console.log(JSON.stringify({ file: path.basename(file), error: String(e.message || e) }));
    }
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
