"""Stand-in insightface model packs for tests: ONNX files with buffalo_l's names and input/output signatures
but constant/random weights. insightface loads and routes them like the real pack (detector, recognition,
landmarks, gender/age), so loading and routing can be tested offline; the detector finds no faces.

    python insightface_standin.py OUT_DIR     # writes det_10g.onnx, w600k_r50.onnx, ... into OUT_DIR
"""
from __future__ import annotations

import os
import sys

import numpy as np


def _init(name, arr):
    from onnx import numpy_helper
    return numpy_helper.from_array(np.asarray(arr, dtype=np.float32), name)


def _save(graph, path):
    import onnx
    from onnx import helper
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _detector(path):
    """SCRFD-like: input [1,3,?,?], 9 outputs (3 strides x score/bbox/kps). Scores are sigmoid(-10): no faces."""
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits, outs = [], [], []
    x = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])
    groups = {"score": 2, "bbox": 8, "kps": 20}
    last = {"score": 1, "bbox": 4, "kps": 10}
    names = {k: [] for k in groups}
    for s in (8, 16, 32):
        nodes.append(helper.make_node("AveragePool", ["input.1"], [f"p{s}"], kernel_shape=[s, s], strides=[s, s]))
        for k, c in groups.items():
            w = np.zeros((c, 3, 1, 1))
            b = np.full((c,), -10.0 if k == "score" else 1.0)
            inits += [_init(f"w_{k}{s}", w), _init(f"b_{k}{s}", b)]
            nodes.append(helper.make_node("Conv", [f"p{s}", f"w_{k}{s}", f"b_{k}{s}"], [f"c_{k}{s}"]))
            nodes.append(helper.make_node("Transpose", [f"c_{k}{s}"], [f"t_{k}{s}"], perm=[0, 2, 3, 1]))
            inits.append(numpy_helper.from_array(np.array([-1, last[k]], dtype=np.int64), f"shape_{k}{s}"))
            src = f"t_{k}{s}"
            if k == "score":
                nodes.append(helper.make_node("Sigmoid", [src], [f"sg{s}"]))
                src = f"sg{s}"
            nodes.append(helper.make_node("Reshape", [src, f"shape_{k}{s}"], [f"{k}_{s}"]))
            names[k].append(f"{k}_{s}")
    for k in ("score", "bbox", "kps"):
        for n in names[k]:
            outs.append(helper.make_tensor_value_info(n, TensorProto.FLOAT, ["?", last[k]]))
    _save(helper.make_graph(nodes, "det", [x], outs, inits), path)


def _head(path, size, outdim, inname="data"):
    from onnx import TensorProto, helper
    x = helper.make_tensor_value_info(inname, TensorProto.FLOAT, [None, 3, size, size])
    y = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [None, outdim])
    rng = np.random.default_rng(0)
    n = [helper.make_node("GlobalAveragePool", [inname], ["g"]), helper.make_node("Flatten", ["g"], ["f"]),
         helper.make_node("Gemm", ["f", "W", "B"], ["fc1"])]
    inits = [_init("W", rng.normal(size=(3, outdim))), _init("B", rng.normal(size=(outdim,)))]
    _save(helper.make_graph(n, os.path.basename(path), [x], [y], inits), path)


def write_buffalo_standin(out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    _detector(os.path.join(out_dir, "det_10g.onnx"))
    _head(os.path.join(out_dir, "w600k_r50.onnx"), 112, 512, "input.1")   # recognition (ArcFace 112 -> 512)
    _head(os.path.join(out_dir, "1k3d68.onnx"), 192, 3309)                # landmark_3d_68
    _head(os.path.join(out_dir, "2d106det.onnx"), 192, 212)               # landmark_2d_106
    _head(os.path.join(out_dir, "genderage.onnx"), 96, 3)                 # genderage
    return sorted(os.listdir(out_dir))


if __name__ == "__main__":
    print(write_buffalo_standin(sys.argv[1]))
