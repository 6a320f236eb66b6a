"""Compare our dlib128 embeddings with the real face_recognition library (dlib), an outside peer.

usage: compare_face_recognition.py OURS.jsonl PHOTO_OR_DIR...

OURS.jsonl is `bench-embed --profile processor/profiles/dlib128.json --jsonl` output (one line per
photo: photo, faces[bbox, embedding]). For every photo face_recognition 1.3.0 detects faces (HOG,
its default), takes its 5-point landmarks and computes its 128-d encodings; faces are matched to
ours by box overlap (IoU >= 0.3, best first). Printed per matched face: cosine and Euclidean
distance between the two embeddings (face_recognition calls two faces the same person below
0.6). Then, for both pipelines, the same-person vs different-person separation on the matched
faces whose photo names carry a person label (`obama*.jpg`, `biden.jpg`): the lowest same-person
and highest different-person cosine.

The last line: `matched=N of ours=M theirs=K cos_min=... cos_median=... dist_max=...`.
"""

import json
import os
import sys

import face_recognition
import numpy as np

PERSON_LABELS = {"obama": "obama", "obama2": "obama", "obama3": "obama", "biden": "biden"}


def iou(a, b):
    ax1, ay1, ax2, ay2 = a
    bx1, by1, bx2, by2 = b
    iw = max(0.0, min(ax2, bx2) - max(ax1, bx1))
    ih = max(0.0, min(ay2, by2) - max(ay1, by1))
    inter = iw * ih
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    return inter / union if union > 0 else 0.0


def list_photos(args):
    out = []
    for a in args:
        if os.path.isdir(a):
            for n in sorted(os.listdir(a)):
                if n.lower().endswith((".jpg", ".jpeg", ".png")):
                    out.append(os.path.join(a, n))
        else:
            out.append(a)
    return out


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    ours = {}
    with open(sys.argv[1]) as f:
        for line in f:
            rec = json.loads(line)
            ours[os.path.basename(rec["photo"])] = rec.get("faces", [])
    matched, n_ours, n_theirs = [], 0, 0
    for path in list_photos(sys.argv[2:]):
        name = os.path.basename(path)
        if name not in ours:
            continue
        img = face_recognition.load_image_file(path)
        locs = face_recognition.face_locations(img)  # (top, right, bottom, left)
        encs = face_recognition.face_encodings(img, known_face_locations=locs)
        theirs = [((l, t, r, b), np.asarray(e, dtype=np.float64)) for (t, r, b, l), e in zip(locs, encs)]
        mine = []
        for face in ours[name]:
            x, y, w, h = face["bbox"]
            mine.append(((x, y, x + w, y + h), np.asarray(face["embedding"], dtype=np.float64)))
        n_ours += len(mine)
        n_theirs += len(theirs)
        pairs = sorted(((iou(m[0], t[0]), i, j) for i, m in enumerate(mine) for j, t in enumerate(theirs)),
                       reverse=True)
        used_i, used_j = set(), set()
        for ov, i, j in pairs:
            if ov < 0.3 or i in used_i or j in used_j:
                continue
            used_i.add(i)
            used_j.add(j)
            a, b = mine[i][1], theirs[j][1]
            cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
            dist = float(np.linalg.norm(a - b))
            matched.append((name, i, a, b, cos, dist))
            print(f"{name:32s} face {i}: iou={ov:.3f} cos={cos:.4f} dist={dist:.4f}")
        print(f"{name:32s} faces ours={len(mine)} theirs={len(theirs)}")
    if not matched:
        print("no faces matched", file=sys.stderr)
        return 1
    # Same vs different person, by each pipeline's own embeddings.
    labelled = [(PERSON_LABELS[os.path.splitext(m[0])[0]], m) for m in matched
                if os.path.splitext(m[0])[0] in PERSON_LABELS]
    for who, idx in (("ours", 2), ("face_recognition", 3)):
        same, diff = [], []
        for x in range(len(labelled)):
            for y in range(x + 1, len(labelled)):
                ea, eb = labelled[x][1][idx], labelled[y][1][idx]
                c = float(ea @ eb / (np.linalg.norm(ea) * np.linalg.norm(eb)))
                (same if labelled[x][0] == labelled[y][0] else diff).append(c)
        if same and diff:
            print(f"{who}: same-person cos min={min(same):.4f}, different-person cos max={max(diff):.4f}")
    cos = np.array([m[4] for m in matched])
    dist = np.array([m[5] for m in matched])
    print(f"matched={len(matched)} of ours={n_ours} theirs={n_theirs} cos_min={cos.min():.4f} "
          f"cos_median={np.median(cos):.4f} dist_max={dist.max():.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
