"""Speed of candidate edge nets: training throughput (PyTorch, CPU) and inference (ONNX Runtime).

Why: the shipped model must train in < 30 min on 2 cores and run fast on
tract, which runs plain conv nets ~3-6x slower than ONNX Runtime on the same
CPU (/work/shared/notes/tract-speed.md). So each candidate is measured for
training ROIs/s and for ORT f32/int8 latency of one batch of 16 ROIs (the
daemon's vote); tract's time is estimated from the notes' ratio. Random
weights and inputs: speed does not depend on them.

::

    python -m amfp_train.bench --out build/bench.json
    python -m amfp_train.bench --candidate 96:16,32,64,96,128:1,2,2,2,2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .models import EdgeNet, flops_per_roi

CANDIDATES = [
    # roi : widths : depths : stem stride : pool
    "192:16,32,64,96,128:1,2,2,2,2:2:avgstd",  # shipped: native 10.6 um/px, learned 2x downsampling
    "96:16,32,64,96,128:1,2,2,2,2:1:avgstd",   # same FLOPs on 2x box-downscaled input (21.2 um/px)
    "128:16,32,64,96,128:1,2,2,2,2:1:avg",
    "256:16,32,64,96,128:1,2,2,2,2:2:avgstd",
    "192:24,48,96,128,192:1,2,2,2,2:2:avgstd",
    "192:16,32,48,64,96:1,1,2,2,2:2:avgstd",
]


def parse(c: str):
    f = c.split(":")
    roi, w, d = f[:3]
    stem = int(f[3]) if len(f) > 3 else 1
    pool = f[4] if len(f) > 4 else "avg"
    return int(roi), [int(v) for v in w.split(",")], [int(v) for v in d.split(",")], stem, pool


def median_time(fn, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def bench(c: str, classes: int = 21, batch: int = 48, steps: int = 6, threads: int = 2) -> dict:
    import onnxruntime as ort

    from .export import metadata_props  # noqa: F401  (same export path as the real one)

    torch.set_num_threads(threads)
    roi, widths, depths, stem, pool = parse(c)
    m = EdgeNet(classes, 1, widths, depths, pool=pool, stem_stride=stem)
    gflop = flops_per_roi(m, 1, roi) / 1e9
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    x = torch.randn(batch, 1, roi, roi)
    y = torch.randint(0, classes, (batch,))
    m.train()

    def step():
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()

    step()
    t_step = median_time(step, steps)
    m.eval().fuse()
    res = {"candidate": c, "roi": roi, "widths": widths, "depths": depths, "gflop_per_roi": round(gflop, 4),
           "params_k": round(sum(p.numel() for p in m.parameters()) / 1e3, 1),
           "train_rois_per_s": round(batch / t_step, 1)}
    with tempfile.TemporaryDirectory() as td:
        f32 = Path(td) / "m.onnx"
        torch.onnx.export(m, (torch.zeros(16, 1, roi, roi),), str(f32), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"])
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        xi = np.random.default_rng(0).standard_normal((16, 1, roi, roi)).astype(np.float32)
        s = ort.InferenceSession(str(f32), so, providers=["CPUExecutionProvider"])
        s.run(None, {"input": xi})
        res["ort_f32_16rois_ms"] = round(1000 * median_time(lambda: s.run(None, {"input": xi}), 7), 2)
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        from .quantize import RoiReader

        q = Path(td) / "q.onnx"
        quantize_static(str(f32), str(q), RoiReader([xi]), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        s8 = ort.InferenceSession(str(q), so, providers=["CPUExecutionProvider"])
        s8.run(None, {"input": xi})
        res["ort_int8_16rois_ms"] = round(1000 * median_time(lambda: s8.run(None, {"input": xi}), 7), 2)
    # tract estimate: the notes measured tract at 3.4x (2 threads, two batches of 8) to 6x (one batch)
    res["tract_f32_16rois_ms_est"] = [round(3.4 * res["ort_f32_16rois_ms"]), round(6 * res["ort_f32_16rois_ms"])]
    # minutes of pure compute for the shipped schedule (12 epochs x 250 steps x 48 ROIs)
    res["train_min_for_144k_rois"] = round(144000 / res["train_rois_per_s"] / 60, 1)
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidate", action="append", help="roi:widths:depths (repeatable)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    rows = []
    for c in a.candidate or CANDIDATES:
        r = bench(c, threads=a.threads)
        print(json.dumps(r), flush=True)
        rows.append(r)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
