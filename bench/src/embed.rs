//! Face-embedding tool: our Rust embed core on photos, with the reference's JSONL output, and
//! the comparison of two such outputs (parity and speed).
//!
//! * `bench-embed --profile P [--jsonl] PHOTO_OR_DIR...` — run `processor::embed` on the
//!   photos, one at a time; `--jsonl` writes exactly the record format of
//!   `bench/embed/embed_ref.py` (photo, width, height, faces, ms), otherwise a short summary.
//! * `bench-embed compare --ref R.jsonl --ours O.jsonl [--timing]` — match faces per photo by
//!   box IoU and report embedding cosine, IoU and box/landmark distances; with several
//!   `--ref`/`--ours` files (rounds) and `--timing`, per-photo latency medians and the
//!   ours/reference ratio. Exit status 1 when a photo's face counts differ or a cosine is
//!   below `--min-cos`.
//!
//! Used by `scripts/parity` and `scripts/bench-embed`.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use processor::embed::{default_model_dir, default_ort_dylib, FaceEmbedder};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Profile file (processor/profiles/*.json).
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Model directory (default: $MODEL_DIR or ~/.cache/photo-pipeline/models).
    #[arg(long)]
    models: Option<PathBuf>,
    /// ONNX Runtime library (default: $ORT_DYLIB_PATH or <models>/lib/libonnxruntime.so.1.31.1).
    #[arg(long)]
    ort_dylib: Option<PathBuf>,
    /// ONNX Runtime intra-op threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Write the reference's JSONL records (one line per photo) instead of a summary.
    #[arg(long)]
    jsonl: bool,
    /// Add a "debug" object (MTCNN pyramid and stage counts) to each record.
    #[arg(long)]
    debug: bool,
    /// Write the output here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Photos or directories (walked recursively, sorted, as embed_ref.py does).
    photos: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Compare reference and Rust JSONL outputs.
    Compare(CompareArgs),
}

#[derive(clap::Args)]
struct CompareArgs {
    /// embed_ref.py output; repeat for several timing rounds (parity uses the first).
    #[arg(long = "ref", required = true)]
    reference: Vec<PathBuf>,
    /// bench-embed --jsonl output; repeat for several timing rounds (parity uses the first).
    #[arg(long = "ours", required = true)]
    ours: Vec<PathBuf>,
    /// Lowest acceptable embedding cosine.
    #[arg(long, default_value_t = 0.999)]
    min_cos: f64,
    /// Also report per-photo latency and end with `ratio=... cos_min=...`.
    #[arg(long)]
    timing: bool,
}

const IMAGE_EXTS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"];

#[derive(Serialize, Deserialize, Clone, Debug)]
struct FaceRec {
    bbox: [f64; 4],
    score: f64,
    landmarks: Vec<[f64; 2]>,
    embedding: Vec<f64>,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
struct Record {
    photo: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    height: Option<u32>,
    #[serde(default)]
    faces: Vec<FaceRec>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    ms: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    debug: Option<serde_json::Value>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.cmd {
        Some(Cmd::Compare(c)) => {
            let ok = compare(&c)?;
            std::process::exit(if ok { 0 } else { 1 });
        }
        None => {
            let failed = run(&args.run)?;
            std::process::exit(if failed { 1 } else { 0 });
        }
    }
}

/// Files named by `args`, as `embed_ref.py`'s `list_photos`: a directory is walked
/// recursively (files of a directory before its subdirectories, both sorted), the name being
/// the path relative to it; a file is taken as is, named by its base name.
fn list_photos(args: &[PathBuf]) -> Result<Vec<(PathBuf, String)>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) -> Result<()> {
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
        files.sort();
        dirs.sort();
        for f in files {
            let ext = f
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .unwrap_or_default();
            if IMAGE_EXTS.contains(&ext.as_str()) {
                let name = f
                    .strip_prefix(root)
                    .unwrap_or(&f)
                    .to_string_lossy()
                    .into_owned();
                out.push((f, name));
            }
        }
        for d in dirs {
            walk(root, &d, out)?;
        }
        Ok(())
    }
    let mut out = Vec::new();
    for a in args {
        if a.is_dir() {
            walk(a, a, &mut out)?;
        } else {
            let name = a
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.push((a.clone(), name));
        }
    }
    Ok(out)
}

fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// Run mode; returns whether any photo failed.
fn run(a: &RunArgs) -> Result<bool> {
    let Some(profile) = &a.profile else {
        bail!("--profile is required (or use the compare subcommand)")
    };
    if a.photos.is_empty() {
        bail!("no photos given");
    }
    let models = a.models.clone().unwrap_or_else(default_model_dir);
    let dylib = a
        .ort_dylib
        .clone()
        .unwrap_or_else(|| default_ort_dylib(&models));
    let t = Instant::now();
    let mut embedder = FaceEmbedder::load(profile, &models, &dylib, a.threads)?;
    eprintln!("bench-embed: models loaded in {:.1} ms", ms(t.elapsed()));
    let mut out: Box<dyn Write> = match &a.out {
        Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut failed = false;
    for (path, name) in list_photos(&a.photos)? {
        let rec = match process(&mut embedder, &path, &name, a.debug) {
            Ok(r) => r,
            Err(e) => {
                failed = true;
                Record {
                    photo: name.clone(),
                    width: None,
                    height: None,
                    faces: vec![],
                    ms: BTreeMap::new(),
                    error: Some(format!("{e:#}")),
                    debug: None,
                }
            }
        };
        if a.jsonl {
            writeln!(out, "{}", serde_json::to_string(&rec)?)?;
        } else {
            let total = rec.ms.get("total").copied().unwrap_or(0.0);
            match &rec.error {
                Some(e) => writeln!(out, "{name}: error: {e}")?,
                None => writeln!(
                    out,
                    "{name}: {} faces, {total:.1} ms {:?}",
                    rec.faces.len(),
                    rec.ms
                )?,
            }
        }
        out.flush()?;
    }
    Ok(failed)
}

fn process(e: &mut FaceEmbedder, path: &Path, name: &str, debug: bool) -> Result<Record> {
    let t0 = Instant::now();
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let input = e.prepare(&data, 1 << 30)?;
    let t1 = Instant::now();
    let (faces, t) = e.embed_input_timed(&input)?;
    let t4 = Instant::now();
    let decode = t1 - t0;
    let mut msmap = BTreeMap::new();
    msmap.insert("decode".to_string(), ms(decode));
    msmap.insert("detect".to_string(), ms(t.detect));
    msmap.insert("align".to_string(), ms(t.align));
    msmap.insert("embed".to_string(), ms(t.embed));
    msmap.insert("total".to_string(), ms(t4 - t0));
    let dbg = if debug {
        e.last_debug().map(|d| {
            serde_json::json!({
                "scales": d.scales.iter().map(|s| serde_json::json!([s.0, s.1, s.2, s.3])).collect::<Vec<_>>(),
                "stage_counts": d.stage_counts,
            })
        })
    } else {
        None
    };
    Ok(Record {
        photo: name.to_string(),
        width: Some(input.source_width),
        height: Some(input.source_height),
        faces: faces
            .into_iter()
            .map(|f| FaceRec {
                bbox: f.bbox.map(f64::from),
                score: f64::from(f.score),
                landmarks: f
                    .landmarks
                    .iter()
                    .map(|p| [f64::from(p[0]), f64::from(p[1])])
                    .collect(),
                embedding: f.embedding.iter().map(|&v| f64::from(v)).collect(),
            })
            .collect(),
        ms: msmap,
        error: None,
        debug: dbg,
    })
}

fn read_jsonl(path: &Path) -> Result<Vec<Record>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{}:{}: bad record", path.display(), i + 1))
        })
        .collect()
}

fn iou(a: &[f64; 4], b: &[f64; 4]) -> f64 {
    let ix = (a[0] + a[2]).min(b[0] + b[2]) - a[0].max(b[0]);
    let iy = (a[1] + a[3]).min(b[1] + b[3]) - a[1].max(b[1]);
    let inter = ix.max(0.0) * iy.max(0.0);
    let union = a[2] * a[3] + b[2] * b[3] - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

fn cosine(a: &[f64], b: &[f64]) -> f64 {
    if a.len() != b.len() || a.is_empty() {
        return f64::NAN;
    }
    let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Faces matched greedily by descending box IoU (each face used once, IoU > 0).
fn match_faces(r: &[FaceRec], o: &[FaceRec]) -> Vec<(usize, usize, f64)> {
    let mut pairs: Vec<(usize, usize, f64)> = Vec::new();
    for (i, fr) in r.iter().enumerate() {
        for (j, fo) in o.iter().enumerate() {
            let v = iou(&fr.bbox, &fo.bbox);
            if v > 0.0 {
                pairs.push((i, j, v));
            }
        }
    }
    pairs.sort_by(|a, b| b.2.total_cmp(&a.2));
    let (mut ur, mut uo) = (vec![false; r.len()], vec![false; o.len()]);
    let mut out = Vec::new();
    for (i, j, v) in pairs {
        if !ur[i] && !uo[j] {
            ur[i] = true;
            uo[j] = true;
            out.push((i, j, v));
        }
    }
    out.sort_by_key(|p| (p.0, p.1));
    out
}

/// Compare mode; returns whether parity holds.
fn compare(c: &CompareArgs) -> Result<bool> {
    let refs: Vec<Vec<Record>> = c
        .reference
        .iter()
        .map(|p| read_jsonl(p))
        .collect::<Result<_>>()?;
    let ours: Vec<Vec<Record>> = c
        .ours
        .iter()
        .map(|p| read_jsonl(p))
        .collect::<Result<_>>()?;
    let index = |recs: &[Record]| -> BTreeMap<String, Record> {
        recs.iter().map(|r| (r.photo.clone(), r.clone())).collect()
    };
    let ours0 = index(&ours[0]);
    let mut ok = true;
    let (mut cos_min, mut iou_min, mut dbox_max, mut dlmk_max) =
        (f64::INFINITY, f64::INFINITY, 0.0f64, 0.0f64);
    let mut demb_max = 0.0f64;
    let (mut n_faces, mut n_photos) = (0usize, 0usize);
    println!(
        "{:<28} {:>5} {:>5} {:>9} {:>8} {:>8} {:>8} {:>9}  status",
        "photo", "ref", "ours", "cos_min", "iou_min", "dbox_px", "dlmk_px", "demb"
    );
    for r in &refs[0] {
        n_photos += 1;
        let Some(o) = ours0.get(&r.photo) else {
            println!("{:<28} missing from our output  FAIL", r.photo);
            ok = false;
            continue;
        };
        if r.error.is_some() || o.error.is_some() {
            let both = r.error.is_some() && o.error.is_some();
            println!(
                "{:<28} error ref={:?} ours={:?}  {}",
                r.photo,
                r.error,
                o.error,
                if both { "ok (both failed)" } else { "FAIL" }
            );
            ok &= both;
            continue;
        }
        let pairs = match_faces(&r.faces, &o.faces);
        let (mut pc, mut pi, mut pb, mut pl) = (f64::INFINITY, f64::INFINITY, 0.0f64, 0.0f64);
        let mut pe = 0.0f64;
        for &(i, j, v) in &pairs {
            let (fr, fo) = (&r.faces[i], &o.faces[j]);
            let cs = cosine(&fr.embedding, &fo.embedding);
            pc = pc.min(if cs.is_nan() { f64::NEG_INFINITY } else { cs });
            pi = pi.min(v);
            for (x, y) in fr.embedding.iter().zip(&fo.embedding) {
                pe = pe.max((x - y).abs());
            }
            let (r4, o4) = (fr.bbox, fo.bbox);
            for k in 0..4 {
                pb = pb.max((r4[k] - o4[k]).abs());
            }
            for (p, q) in fr.landmarks.iter().zip(&fo.landmarks) {
                pl = pl.max((p[0] - q[0]).abs()).max((p[1] - q[1]).abs());
            }
        }
        n_faces += r.faces.len();
        let counts_ok = r.faces.len() == o.faces.len() && pairs.len() == r.faces.len();
        let photo_ok = counts_ok && (pairs.is_empty() || pc >= c.min_cos);
        ok &= photo_ok;
        if !pairs.is_empty() {
            cos_min = cos_min.min(pc);
            iou_min = iou_min.min(pi);
            dbox_max = dbox_max.max(pb);
            dlmk_max = dlmk_max.max(pl);
            demb_max = demb_max.max(pe);
        }
        let f = |v: f64| {
            if v.is_finite() {
                format!("{v:.6}")
            } else {
                "-".into()
            }
        };
        println!(
            "{:<28} {:>5} {:>5} {:>9} {:>8} {:>8.4} {:>8.4} {:>9.2e}  {}",
            r.photo,
            r.faces.len(),
            o.faces.len(),
            f(pc),
            f(pi),
            pb,
            pl,
            pe,
            if photo_ok { "ok" } else { "FAIL" }
        );
    }
    let cos_show = if cos_min.is_finite() {
        cos_min
    } else {
        f64::NAN
    };
    let iou_show = if iou_min.is_finite() {
        iou_min
    } else {
        f64::NAN
    };
    println!(
        "parity: photos={n_photos} faces={n_faces} cos_min={cos_show:.6} iou_min={iou_show:.6} dbox_max={dbox_max:.4}px dlmk_max={dlmk_max:.4}px demb_max={demb_max:.2e} min_cos={} -> {}",
        c.min_cos,
        if ok { "PASS" } else { "FAIL" }
    );

    if c.timing {
        // Per photo: median over rounds of total (decode included) and total - decode.
        let collect = |runs: &[Vec<Record>]| -> BTreeMap<String, (Vec<f64>, Vec<f64>)> {
            let mut m: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
            for run in runs {
                for r in run.iter().filter(|r| r.error.is_none()) {
                    let total = r.ms.get("total").copied().unwrap_or(f64::NAN);
                    let decode = r.ms.get("decode").copied().unwrap_or(0.0);
                    let e = m.entry(r.photo.clone()).or_default();
                    e.0.push(total - decode);
                    e.1.push(total);
                }
            }
            m
        };
        let (rt, ot) = (collect(&refs), collect(&ours));
        println!();
        println!(
            "{:<28} {:>12} {:>12} {:>7} {:>12} {:>12} {:>7}",
            "photo", "ref_ms", "ours_ms", "ratio", "ref_ms+dec", "ours_ms+dec", "ratio"
        );
        let (mut r_ex, mut o_ex, mut r_in, mut o_in) = (vec![], vec![], vec![], vec![]);
        for (photo, (rx, ri)) in &rt {
            let Some((ox, oi)) = ot.get(photo) else {
                continue;
            };
            let (a, b) = (median(&mut rx.clone()), median(&mut ox.clone()));
            let (ci, di) = (median(&mut ri.clone()), median(&mut oi.clone()));
            println!(
                "{photo:<28} {a:>12.1} {b:>12.1} {:>7.3} {ci:>12.1} {di:>12.1} {:>7.3}",
                b / a,
                di / ci
            );
            r_ex.push(a);
            o_ex.push(b);
            r_in.push(ci);
            o_in.push(di);
        }
        let (mr_ex, mo_ex) = (median(&mut r_ex), median(&mut o_ex));
        let (mr_in, mo_in) = (median(&mut r_in), median(&mut o_in));
        println!(
            "rounds: ref={} ours={}; median per-photo latency, decode excluded: ref {mr_ex:.1} ms, ours {mo_ex:.1} ms, ratio {:.3}",
            refs.len(),
            ours.len(),
            mo_ex / mr_ex
        );
        println!(
            "median per-photo latency, decode included: ref {mr_in:.1} ms, ours {mo_in:.1} ms, ratio {:.3}",
            mo_in / mr_in
        );
        println!("ratio={:.3} cos_min={cos_show:.6}", mo_in / mr_in);
    }
    Ok(ok)
}
