#!/usr/bin/env python3
"""Quality gate for a profile: run the reference pipeline on the fetched test photos and check

  1. same person scores clearly above different people: min cos(obama, obama2|obama3)
     - max cos(obama, biden|astronaut) >= --margin (largest face of each photo);
  2. t1.jpg (insightface's group photo) gives exactly 6 faces;
  3. EXIF orientation: obama.jpg stored turned 90 degrees (JPEG q95) with Orientation=6 comes
     out upright again: 910x1137, landmarks within max(3 px, 3% of the face width) of the
     original's, embedding cos >= 0.9.

Prints the cosine table of the largest face of every photo, face counts and ms per photo.
Exits non-zero when a check fails.

usage: quality_check.py --profile processor/profiles/arcface112.json [--models DIR]
                        [--threads N] [--margin M] [--jsonl OUT]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the repo
import embed_ref  # noqa: E402  (first: sizes numpy's thread pool from --threads)

import numpy as np  # noqa: E402

PHOTOS = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "astronaut.png", "t1.jpg",
          "sample1.jpg", "sample2.jpg", "sample3.jpg", "sample4.jpg", "sample5.jpg", "sample6.jpg"]
SAME = [("obama.jpg", "obama2.jpg"), ("obama.jpg", "obama3.jpg"), ("obama2.jpg", "obama3.jpg")]
DIFF = [("obama.jpg", "biden.jpg"), ("obama.jpg", "astronaut.png"), ("obama2.jpg", "biden.jpg"),
        ("obama3.jpg", "biden.jpg"), ("biden.jpg", "astronaut.png")]


# dlib's descriptors are not normalised and all cosines sit high (~0.8 for strangers), so its
# gap is smaller in cosine terms; in dlib's own metric (euclidean, same person < 0.6) it is clear.
DEFAULT_MARGIN = {"arcface112": 0.15, "dlib128": 0.05}


def rotated_with_orientation6(src: str, dst: str) -> None:
    """Store obama.jpg turned 90 degrees counter-clockwise (JPEG q95) with EXIF Orientation=6,
    which tells viewers to turn it back clockwise: oriented, it is the upright photo again."""
    from PIL import Image
    with Image.open(src) as im:
        stored = im.convert("RGB").transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = 6
        stored.save(dst, "JPEG", quality=95, exif=exif.tobytes())


def largest(rec: dict) -> dict | None:
    faces = rec.get("faces") or []
    return max(faces, key=lambda f: f["bbox"][2] * f["bbox"][3]) if faces else None


def cos(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def dist(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--models", default=os.environ.get("MODEL_DIR", os.path.expanduser("~/.cache/photo-pipeline/models")))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--margin", type=float, default=None,
                    help="required gap between the lowest same-person and highest different-person "
                         "cosine (default: %s, else 0.1)" % DEFAULT_MARGIN)
    ap.add_argument("--jsonl", help="also write the reference output here")
    a = ap.parse_args()

    profile = embed_ref.load_profile(a.profile)
    if a.margin is None:
        a.margin = DEFAULT_MARGIN.get(profile["name"], 0.1)
    pipe = embed_ref.Pipeline(profile, a.models, a.threads)
    imgdir = os.path.join(a.models, "test_images")
    recs = {}
    out = open(a.jsonl, "w") if a.jsonl else None
    for name in PHOTOS:
        path = os.path.join(imgdir, name)
        if not os.path.exists(path):
            print(f"missing {path}: run scripts/fetch-models", file=sys.stderr)
            return 2
        pipe.process(path, name)  # warm-up (first-run allocations), not timed
        recs[name] = pipe.process(path, name)
        if out:
            out.write(json.dumps(recs[name]) + "\n")
    failures = []

    print(f"profile {profile['name']}: {profile['recognizer']['model']} "
          f"({profile['recognizer']['output_dim']}-d), threads={a.threads}")
    print(f"\n{'photo':<14}{'size':>11}{'faces':>6}{'decode':>8}{'detect':>8}{'align':>7}{'embed':>8}{'total':>8}  ms")
    for name, r in recs.items():
        m = r["ms"]
        print(f"{name:<14}{r['width']:>5}x{r['height']:<5}{len(r['faces']):>6}{m['decode']:>8.1f}"
              f"{m['detect']:>8.1f}{m['align']:>7.1f}{m['embed']:>8.1f}{m['total']:>8.1f}")
    tot = [r["ms"]["total"] for r in recs.values()]
    nf = sum(len(r["faces"]) for r in recs.values())
    print(f"mean total {np.mean(tot):.1f} ms/photo; {nf} faces; "
          f"embed {sum(r['ms']['embed'] for r in recs.values()) / max(nf, 1):.1f} ms/face")

    emb = {}
    for name, r in recs.items():
        f = largest(r)
        if f is None:
            failures.append(f"no face in {name}")
            continue
        emb[name] = f["embedding"]
    names = [n for n in PHOTOS if n in emb]
    short = [n.rsplit(".", 1)[0][:8] for n in names]
    print("\ncosine similarity, largest face of each photo")
    print(" " * 10 + "".join(f"{s:>9}" for s in short))
    for n, s in zip(names, short):
        print(f"{s:<10}" + "".join(f"{cos(emb[n], emb[m]):>9.3f}" for m in names))

    same = [(p, q, cos(emb[p], emb[q])) for p, q in SAME if p in emb and q in emb]
    diff = [(p, q, cos(emb[p], emb[q])) for p, q in DIFF if p in emb and q in emb]
    def pairs(lst):
        return ", ".join(f"{p.rsplit('.', 1)[0]}~{q.rsplit('.', 1)[0]} {c:.3f} (L2 {dist(emb[p], emb[q]):.3f})"
                         for p, q, c in lst)
    print("\ncosine (euclidean distance in brackets)")
    print("same person:      " + pairs(same))
    print("different people: " + pairs(diff))
    if len(same) == len(SAME) and len(diff) == len(DIFF):
        gap = min(c for *_, c in same) - max(c for *_, c in diff)
        ok = gap >= a.margin
        print(f"gap (min same - max different) = {gap:.3f} (need >= {a.margin}): {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(f"same/different gap {gap:.3f} < {a.margin}")

    n_t1 = len(recs["t1.jpg"]["faces"])
    print(f"t1.jpg: {n_t1} faces (need 6): {'ok' if n_t1 == 6 else 'FAIL'}")
    if n_t1 != 6:
        failures.append(f"t1.jpg: {n_t1} faces, expected 6")

    # EXIF orientation 6 (rotate 90 degrees clockwise to display)
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "obama_rot6.jpg")
        rotated_with_orientation6(os.path.join(imgdir, "obama.jpg"), p)
        rot = pipe.process(p, "obama_rot6.jpg")
    up = recs["obama.jpg"]
    fr, fu = largest(rot), largest(up)
    okr = (rot["width"], rot["height"]) == (up["width"], up["height"]) and fr is not None and fu is not None
    if okr:
        dl = max(abs(e - g) for pe, pg in zip(fu["landmarks"], fr["landmarks"]) for e, g in zip(pe, pg))
        c = cos(fr["embedding"], fu["embedding"])
        tol = max(3.0, 0.03 * fu["bbox"][2])  # re-encoding moves MTCNN a little
        okr = dl <= tol and c >= 0.9
        print(f"EXIF orientation 6: {rot['width']}x{rot['height']}, landmark shift {dl:.2f} px (<= {tol:.1f}), "
              f"cos to upright {c:.4f}: {'ok' if okr else 'FAIL'}")
    else:
        print(f"EXIF orientation 6: got {rot['width']}x{rot['height']} with {len(rot['faces'])} faces: FAIL")
    if not okr:
        failures.append("EXIF orientation check")

    if failures:
        print("\nFAILED: " + "; ".join(failures))
        return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
