#!/usr/bin/env python3
"""Build dlib's face recognition ResNet (dlib_face_recognition_resnet_model_v1, 128-d) as an
ONNX graph from @vladmandic/face-api's TensorFlow.js weights.

The network is face-api's src/faceRecognitionNet (FaceRecognitionNet.ts, residualLayer.ts,
convLayer.ts, scaleLayer.ts), transcribed op for op:

  x: (N, 3, 150, 150) float32 = (RGB pixel - [122.782, 117.001, 104.298]) / 256 (dlib; face-api
     divides by 255, which the check in scripts/convert-dlib uses)
  convDown(conv32_down)  7x7 stride 2 'valid', + bias, * scale.w + scale.b, relu   -> 32x72x72
  maxPool 3x3 stride 2 'valid'                                                      -> 32x35x35
  residual x3 (conv32_1..3), residualDown(conv64_down), residual x3 (conv64_1..3),
  residualDown(conv128_down), residual x2, residualDown(conv256_down), residual x2,
  residualDown(conv256_down_out)                                                   -> 256x2x2
  global mean over H, W; matMul fc (256x128)                                        -> 128

  residual(x)     = relu(convNoRelu(conv(x, c1), c2) + x)        (3x3 'same' convs)
  residualDown(x) = relu(pad(convNoRelu(convDown(x, c1), c2)) + chanpad(avgPool2x2s2(x)))
     convDown = 3x3 stride 2 'valid'; pad = one zero row at the bottom and one zero column at
     the right when the conv output is smaller than the pooled input; chanpad = zero channels
     appended when the pooled input has fewer channels.

Weights: the manifest lists tensors in file order; uint8-quantised ones are dequantised as
tfjs does, float32(q * scale + min) computed in float64; conv filters go HWIO -> OIHW.
Output name "embedding", input name "input"; batch dimension dynamic.

usage: dlib_to_onnx.py MANIFEST.json WEIGHTS.bin OUT.onnx
"""
from __future__ import annotations

import json
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

H = W = 150


def load_weights(manifest_path: str, bin_path: str) -> dict[str, np.ndarray]:
    with open(manifest_path) as f:
        manifest = json.load(f)
    data = open(bin_path, "rb").read()
    out, off = {}, 0
    for group in manifest:
        for w in group["weights"]:
            shape = w["shape"]
            n = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            if q:
                assert q["dtype"] == "uint8", q
                raw = np.frombuffer(data, dtype=np.uint8, count=n, offset=off).astype(np.float64)
                off += n
                arr = (raw * float(q["scale"]) + float(q["min"])).astype(np.float32)
            else:
                assert w["dtype"] == "float32", w
                arr = np.frombuffer(data, dtype="<f4", count=n, offset=off).astype(np.float32)
                off += 4 * n
            out[w["name"]] = arr.reshape(shape)
    if off != len(data):
        raise SystemExit(f"weights file has {len(data)} bytes, manifest describes {off}")
    return out


class Builder:
    def __init__(self, weights: dict[str, np.ndarray]):
        self.w = weights
        self.nodes: list = []
        self.inits: list = []
        self.used: set[str] = set()
        self.n = 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def get(self, key: str) -> np.ndarray:
        self.used.add(key)
        return self.w[key]

    def conv_layer(self, x: str, prefix: str, stride: int, relu: bool, same: bool) -> str:
        filt = self.get(f"{prefix}/conv/filters")  # HWIO
        bias = self.get(f"{prefix}/conv/bias")
        sw = self.get(f"{prefix}/scale/weights")
        sb = self.get(f"{prefix}/scale/biases")
        k = filt.shape[0]
        wname = self.init(f"{prefix}/conv/W", np.ascontiguousarray(filt.transpose(3, 2, 0, 1)))
        bname = self.init(f"{prefix}/conv/B", bias)
        pad = (k - 1) // 2 if same else 0
        y = self.name(f"{prefix}/conv")
        self.nodes.append(helper.make_node("Conv", [x, wname, bname], [y], kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[pad] * 4, name=y))
        c = filt.shape[3]
        m = self.name(f"{prefix}/scale_mul")
        self.nodes.append(helper.make_node("Mul", [y, self.init(f"{prefix}/scale/w", sw.reshape(1, c, 1, 1))], [m], name=m))
        a = self.name(f"{prefix}/scale_add")
        self.nodes.append(helper.make_node("Add", [m, self.init(f"{prefix}/scale/b", sb.reshape(1, c, 1, 1))], [a], name=a))
        if not relu:
            return a
        r = self.name(f"{prefix}/relu")
        self.nodes.append(helper.make_node("Relu", [a], [r], name=r))
        return r

    def residual(self, x: str, prefix: str) -> str:
        out = self.conv_layer(x, f"{prefix}/conv1", 1, True, True)
        out = self.conv_layer(out, f"{prefix}/conv2", 1, False, True)
        s = self.name(f"{prefix}/add")
        self.nodes.append(helper.make_node("Add", [out, x], [s], name=s))
        r = self.name(f"{prefix}/relu")
        self.nodes.append(helper.make_node("Relu", [s], [r], name=r))
        return r

    def residual_down(self, x: str, prefix: str, hw: int, cin: int) -> tuple[str, int]:
        out = self.conv_layer(x, f"{prefix}/conv1", 2, True, False)
        out = self.conv_layer(out, f"{prefix}/conv2", 1, False, True)
        cout = self.w[f"{prefix}/conv2/conv/filters"].shape[3]
        conv_hw = (hw - 3) // 2 + 1
        pool_hw = hw // 2
        p = self.name(f"{prefix}/avgpool")
        self.nodes.append(helper.make_node("AveragePool", [x], [p], kernel_shape=[2, 2], strides=[2, 2], name=p))
        if conv_hw != pool_hw:
            assert pool_hw == conv_hw + 1
            padded = self.name(f"{prefix}/pad_hw")
            pads = self.init(f"{prefix}/pads_hw", np.array([0, 0, 0, 0, 0, 0, 1, 1], dtype=np.int64))
            self.nodes.append(helper.make_node("Pad", [out, pads], [padded], mode="constant", name=padded))
            out = padded
        if cin != cout:
            padded = self.name(f"{prefix}/pad_c")
            pads = self.init(f"{prefix}/pads_c", np.array([0, 0, 0, 0, 0, cout - cin, 0, 0], dtype=np.int64))
            self.nodes.append(helper.make_node("Pad", [p, pads], [padded], mode="constant", name=padded))
            p = padded
        s = self.name(f"{prefix}/add")
        self.nodes.append(helper.make_node("Add", [p, out], [s], name=s))
        r = self.name(f"{prefix}/relu")
        self.nodes.append(helper.make_node("Relu", [s], [r], name=r))
        return r, pool_hw


def build(weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    b = Builder(weights)
    x = b.conv_layer("input", "conv32_down", 2, True, False)
    hw = (H - 7) // 2 + 1  # 72
    mp = b.name("maxpool")
    b.nodes.append(helper.make_node("MaxPool", [x], [mp], kernel_shape=[3, 3], strides=[2, 2], name=mp))
    x, hw, c = mp, (hw - 3) // 2 + 1, 32  # 35
    for name in ("conv32_1", "conv32_2", "conv32_3"):
        x = b.residual(x, name)
    for down, rest in (("conv64_down", ("conv64_1", "conv64_2", "conv64_3")),
                       ("conv128_down", ("conv128_1", "conv128_2")),
                       ("conv256_down", ("conv256_1", "conv256_2")),
                       ("conv256_down_out", ())):
        x, hw = b.residual_down(x, down, hw, c)
        c = weights[f"{down}/conv2/conv/filters"].shape[3]
        for name in rest:
            x = b.residual(x, name)
    g = b.name("global_avg")
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], [g], name=g))
    f = b.name("flatten")
    b.nodes.append(helper.make_node("Flatten", [g], [f], axis=1, name=f))
    b.used.add("fc")
    b.nodes.append(helper.make_node("MatMul", [f, b.init("fc", weights["fc"])], ["embedding"], name="fc"))
    unused = set(weights) - b.used
    if unused:
        raise SystemExit(f"weights not used by the graph: {sorted(unused)}")
    graph = helper.make_graph(
        b.nodes, "dlib_face_recognition_resnet_model_v1",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, H, W])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 128])],
        b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="photo-pipeline scripts/convert-dlib", producer_version="1")
    model.ir_version = 8
    model.doc_string = ("dlib_face_recognition_resnet_model_v1 (dlib, public domain / CC0 weights) from "
                        "@vladmandic/face-api@1.7.15 model/face_recognition_model (uint8-quantised TF.js). "
                        "Input (N,3,150,150) RGB = (pixel - [122.782,117.001,104.298]) / 256 "
                        "(face-api uses / 255); output 128-d, not normalised.")
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    manifest, weights_bin, out = sys.argv[1:]
    model = build(load_weights(manifest, weights_bin))
    onnx.save(model, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
