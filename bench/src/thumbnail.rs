//! Thumbnail benchmark: our renderer against sharp on the same photos, one thread each,
//! memory to memory, CPU time per photo; plus SSIM of our output against sharp's.
//!
//! Run through `scripts/bench-thumbnail DIR`, which runs sharp first (bench/sharp-thumbnail.js)
//! and passes its results here. Last line:
//! `ratio=<median of per-photo ours/sharp> ssim_mean=<mean> ssim_min=<min>`.

#[path = "cpu_time.rs"]
mod cpu_time;

use clap::Parser;
use cpu_time::{median, process_cpu_ms};
use processor::thumbnail::render::{RenderOptions, Renderer};
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    /// JSON lines written by sharp-thumbnail.js.
    #[arg(long)]
    sharp_results: PathBuf,
    /// Directory where sharp-thumbnail.js wrote its thumbnails.
    #[arg(long)]
    sharp_out: PathBuf,
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// What the anchor is called in the output ("sharp"; scripts/bench-heic: "anchor", which
    /// is heif-convert + sharp).
    #[arg(long, default_value = "sharp")]
    anchor_name: String,
    files: Vec<PathBuf>,
}

#[derive(serde::Deserialize)]
struct SharpResult {
    file: String,
    #[serde(default)]
    cpu_ms: Vec<f64>,
    #[serde(default)]
    error: Option<String>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let anchor = &args.anchor_name;
    let sharp: HashMap<String, SharpResult> = std::fs::read_to_string(&args.sharp_results)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<SharpResult>(l).map(|r| (r.file.clone(), r)))
        .collect::<Result<_, _>>()?;
    let mut renderer =
        Renderer::new(RenderOptions::default()).map_err(|f| anyhow::anyhow!(f.detail))?;
    let (mut ratios, mut ssims, mut ours_total, mut sharp_total) = (vec![], vec![], 0.0, 0.0);
    println!(
        "{:<40} {:>9} {:>9} {:>6} {:>7}  note",
        "photo",
        "ours_ms",
        format!("{anchor}_ms"),
        "ratio",
        "ssim"
    );
    for file in &args.files {
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        let data = std::fs::read(file)?;
        let mut times = Vec::with_capacity(args.repeats);
        let mut last = None;
        for _ in 0..args.repeats {
            let t0 = process_cpu_ms();
            let r = renderer.render(&data);
            times.push(process_cpu_ms() - t0);
            last = Some(r);
        }
        let ours_ms = median(&mut times);
        let Some(s) = sharp.get(&name) else {
            println!(
                "{name:<40} {ours_ms:>9.1} {:>9} {:>6} {:>7}  {anchor} did not run",
                "-", "-", "-"
            );
            continue;
        };
        match (last.expect("repeats >= 1"), &s.error) {
            (Err(f), _) => println!(
                "{name:<40} {ours_ms:>9.1} {:>9} {:>6} {:>7}  ours failed: {}: {}",
                "-",
                "-",
                "-",
                f.reason.as_str(),
                f.detail
            ),
            (Ok(_), Some(e)) => println!(
                "{name:<40} {ours_ms:>9.1} {:>9} {:>6} {:>7}  {anchor} failed: {e}",
                "-", "-", "-"
            ),
            (Ok(out), None) => {
                let sharp_ms = median(&mut s.cpu_ms.clone());
                let theirs = std::fs::read(args.sharp_out.join(format!("{name}.jpg")))?;
                if let Ok(dir) = std::env::var("BENCH_DUMP_DIR") {
                    std::fs::write(
                        PathBuf::from(&dir).join(format!("{name}.ours.jpg")),
                        &out.jpeg,
                    )?;
                    std::fs::write(
                        PathBuf::from(&dir).join(format!("{name}.sharp.jpg")),
                        &theirs,
                    )?;
                }
                let (score, same_size) = devstack::compare::ssim(&out.jpeg, &theirs)?;
                let ratio = ours_ms / sharp_ms;
                ratios.push(ratio);
                ssims.push(score);
                ours_total += ours_ms;
                sharp_total += sharp_ms;
                let note = if same_size {
                    String::new()
                } else {
                    format!(
                        "size differs from {anchor}'s ({}x{})",
                        out.width, out.height
                    )
                };
                println!(
                    "{name:<40} {ours_ms:>9.1} {sharp_ms:>9.1} {ratio:>6.2} {score:>7.4}  {note}"
                );
            }
        }
    }
    anyhow::ensure!(!ratios.is_empty(), "no photo was rendered by both");
    let ssim_mean = ssims.iter().sum::<f64>() / ssims.len() as f64;
    let ssim_min = ssims.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "photos={} total_cpu_ms ours={ours_total:.1} {anchor}={sharp_total:.1} total_ratio={:.3}",
        ratios.len(),
        ours_total / sharp_total
    );
    println!(
        "ratio={:.3} ssim_mean={ssim_mean:.4} ssim_min={ssim_min:.4}",
        median(&mut ratios)
    );
    Ok(())
}
