//! Decode-once benchmark: CPU per photo of the thumbnail + embed-input work with the hand-off,
//! against the anchor measured in the same run — the two-decode pipeline it replaces (thumbnail
//! with DCT shrink-on-load, then the embed stage decoding the original again and shrinking it
//! to the detector size). Detection and embedding themselves are the same in both and are left
//! out.
//!
//! `bench-handoff [--repeats N] [--max-side 1280] PHOTO_OR_DIR...`; one thread, memory to
//! memory. Last line: `ratio_memory=<handoff/anchor, medians of per-photo CPU>
//! ratio_derivative=<with PNG encode + decode> png_kib=<median derivative size>`.

#[path = "cpu_time.rs"]
mod cpu_time;

use clap::Parser;
use cpu_time::{median, process_cpu_ms};
use processor::embed::resize::{Region, Resizer, View};
use processor::embed::{decode_oriented_rgb, input::shrunk_size, EmbedInput};
use processor::thumbnail::render::{RenderOptions, Renderer};
use std::path::PathBuf;

#[derive(Parser)]
struct Args {
    /// Timed rounds per photo (the median is kept).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// The embed profile's `embed_input.max_side` (and the detector's `max_image_side`).
    #[arg(long, default_value_t = 1280)]
    max_side: u32,
    /// Photos, or directories of photos.
    files: Vec<PathBuf>,
}

/// Median CPU milliseconds of `f` over `repeats` runs.
fn timed<T>(repeats: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut times = Vec::with_capacity(repeats);
    let mut last = None;
    for _ in 0..repeats.max(1) {
        let t = process_cpu_ms();
        last = Some(f());
        times.push(process_cpu_ms() - t);
    }
    (median(&mut times), last.expect("at least one run"))
}

fn photos(args: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for a in args {
        if a.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(a)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().and_then(|e| e.to_str()).is_some_and(|e| {
                        ["jpg", "jpeg", "png"].contains(&e.to_lowercase().as_str())
                    })
                })
                .collect();
            v.sort();
            out.extend(v);
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let files = photos(&args.files)?;
    anyhow::ensure!(!files.is_empty(), "no photos given");
    let opts = RenderOptions::default();
    let mut renderer = Renderer::new(opts).map_err(|f| anyhow::anyhow!(f.detail))?;
    let mut resizer = Resizer::default();
    let (mut r_mem, mut r_der, mut png_kib) = (Vec::new(), Vec::new(), Vec::new());
    println!(
        "{:40} {:>9} {:>9} {:>9} {:>8} {:>8} {:>7}",
        "photo", "anchor_ms", "thumb_ms", "embed_ms", "handoff", "png_ms", "ratio"
    );
    for path in files {
        let data = std::fs::read(&path)?;
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        // Anchor: thumbnail with shrink-on-load, then the embed stage's own decode + shrink.
        let (thumb_ms, r) = timed(args.repeats, || renderer.render(&data));
        if let Err(f) = r {
            println!("{name:40} skipped: {}", f.detail);
            continue;
        }
        let max_side = args.max_side;
        let (embed_ms, _) = timed(args.repeats, || {
            let img = decode_oriented_rgb(&data, opts.max_pixels).expect("decodes");
            let (w, h) = (img.width as usize, img.height as usize);
            if w.max(h) > max_side as usize {
                let (dw, dh) = shrunk_size(w, h, max_side);
                let mut out = Vec::new();
                resizer.area_resize(
                    View {
                        data: &img.pixels,
                        width: w,
                        height: h,
                    },
                    Region { x0: 0, y0: 0, w, h },
                    dw,
                    dh,
                    &mut out,
                );
            }
        });
        // Decode once: thumbnail and embed input from one full decode.
        let (handoff_ms, r) = timed(args.repeats, || {
            renderer.render_with_embed_input(&data, Some(max_side))
        });
        let (_, input) = r.map_err(|f| anyhow::anyhow!(f.detail))?;
        let (png_ms, png) = timed(args.repeats, || {
            let png = input.to_png().expect("encodes");
            let back = EmbedInput::from_png(
                &png,
                input.source_width,
                input.source_height,
                opts.max_pixels,
            )
            .expect("decodes");
            assert_eq!(back, input, "derivative must be lossless");
            png
        });
        let anchor = thumb_ms + embed_ms;
        r_mem.push(handoff_ms / anchor);
        r_der.push((handoff_ms + png_ms) / anchor);
        png_kib.push(png.len() as f64 / 1024.0);
        println!(
            "{name:40} {anchor:9.1} {thumb_ms:9.1} {embed_ms:9.1} {handoff_ms:8.1} {png_ms:8.1} {:7.3}",
            handoff_ms / anchor
        );
    }
    println!(
        "ratio_memory={:.3} ratio_derivative={:.3} png_kib={:.0}",
        median(&mut r_mem),
        median(&mut r_der),
        median(&mut png_kib)
    );
    Ok(())
}
