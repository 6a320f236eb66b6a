#!/usr/bin/env python3
"""Numerical check of the converted dlib model against face-api on TensorFlow.js.

  check_dlib.py inputs  REPO MODEL_DIR CHIPS.f32          -> prints the number of chips
  check_dlib.py compare MODEL.onnx CHIPS.f32 N TFJS.f32 [MIN_COS]

`inputs` writes N float32 NHWC 150x150x3 RGB chips (pixel values 0..255): the dlib128 chips of
the largest face in obama.jpg, obama2.jpg, biden.jpg, astronaut.png and t1.jpg (MTCNN +
alignment from bench/embed/embed_ref.py, the profile processor/profiles/dlib128.json), plus two
seeded uniform-noise chips. `compare` runs the ONNX model on exactly face-api's input
((pixel - mean) / 255, float32) and compares with face-api's descriptors: max abs diff and
cosine per chip; exit 1 when any cosine is below MIN_COS (default 0.9999). It also reports how
much dlib's own /256 scaling (what the dlib128 profile uses) moves the descriptor.
"""
from __future__ import annotations

import os
import sys

import numpy as np

MEAN = np.array([122.782, 117.001, 104.298], dtype=np.float64)
PHOTOS = ["obama.jpg", "obama2.jpg", "biden.jpg", "astronaut.png", "t1.jpg"]


def make_inputs(repo: str, models: str, out: str) -> int:
    sys.path.insert(0, os.path.join(repo, "bench", "embed"))
    sys.dont_write_bytecode = True  # no __pycache__ in the repo
    import onnxruntime as ort
    import embed_ref

    profile = embed_ref.load_profile(os.path.join(repo, "processor", "profiles", "dlib128.json"))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    det = embed_ref.MTCNN(profile["detector"], models, so)
    template = np.asarray(profile["alignment"]["template"], dtype=np.float64)
    cw, ch = profile["alignment"]["output_size"]
    chips = []
    for name in PHOTOS:
        rgb, _, _ = embed_ref.decode(os.path.join(models, "test_images", name))
        boxes, pts = det.detect(rgb.astype(np.float64))
        if boxes.shape[0] == 0:
            raise SystemExit(f"no face found in {name}")
        k = int(np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        t = embed_ref.similarity_lstsq(pts[k], template)
        chips.append(embed_ref.warp_similarity(rgb, t, cw, ch))
    rng = np.random.default_rng(20240601)
    for _ in range(2):
        chips.append(rng.uniform(0.0, 255.0, size=(150, 150, 3)))
    arr = np.stack(chips).astype("<f4")
    arr.tofile(out)
    print(arr.shape[0])
    return 0


def compare(model: str, chips_path: str, n: int, tfjs_path: str, min_cos: float) -> int:
    import onnxruntime as ort

    chips = np.fromfile(chips_path, dtype="<f4").reshape(n, 150, 150, 3).astype(np.float64)
    ref = np.fromfile(tfjs_path, dtype="<f4").reshape(n, 128).astype(np.float64)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])

    def run(std: float) -> np.ndarray:
        x = ((chips - MEAN) / std).astype(np.float32).transpose(0, 3, 1, 2)
        return sess.run(None, {"input": np.ascontiguousarray(x)})[0].astype(np.float64)

    got = run(255.0)
    dlib = run(256.0)
    names = PHOTOS + [f"noise{i}" for i in range(n - len(PHOTOS))]
    worst_cos, worst_abs = 1.0, 0.0
    print(f"{'chip':<14}{'max|onnx-tfjs|':>16}{'cosine':>14}{'cos(/256,/255)':>16}")
    for i in range(n):
        d = float(np.abs(got[i] - ref[i]).max())
        c = float(got[i] @ ref[i] / np.linalg.norm(got[i]) / np.linalg.norm(ref[i]))
        c256 = float(dlib[i] @ got[i] / np.linalg.norm(dlib[i]) / np.linalg.norm(got[i]))
        worst_cos, worst_abs = min(worst_cos, c), max(worst_abs, d)
        print(f"{names[i]:<14}{d:>16.3e}{c:>14.10f}{c256:>16.8f}")
    ok = worst_cos >= min_cos
    print(f"max abs diff {worst_abs:.3e}, min cosine {worst_cos:.10f} (need >= {min_cos}): {'ok' if ok else 'FAIL'}")
    return 0 if ok else 1


def main() -> int:
    if len(sys.argv) >= 5 and sys.argv[1] == "inputs":
        return make_inputs(sys.argv[2], sys.argv[3], sys.argv[4])
    if len(sys.argv) >= 6 and sys.argv[1] == "compare":
        min_cos = float(sys.argv[6]) if len(sys.argv) > 6 else 0.9999
        return compare(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], min_cos)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
