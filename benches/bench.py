#!/usr/bin/env python3
"""amfp's inference benchmark: its two engines against Python's onnxruntime and the paper's pipeline, in one run.

One command, one process tree (BENCHMARKS.md):

    python3 benches/bench.py            # full mode: the numbers (quiet machine; ~10-15 min on 2 cores)
    python3 benches/bench.py --quick    # CI: every stage, tiny repetitions (~1 min); not the numbers

What runs, every engine in its own child process (so that each one's peak RSS is its own):

- the same ROIs for every engine: 16 ROIs of a freshly simulated part as `amfp identify
  --save-rois` cut them (seeded), fed to the shipped f32 and int8 models;
- tract (`examples/tract_bench.rs`) at 1 and 2 threads in each way tract can use two cores;
  amfp's `Model` on onnxruntime (the same example, `--engine onnxruntime`) and Python's
  onnxruntime at 1 and 2 intra-op threads; every amfp row's logits are checked against Python
  onnxruntime's on those ROIs;
- where tract's time goes, per op type (f32 and int8);
- the paper's model: timm `efficientnetv2_rw_m` at 448 px, random weights, PyTorch eager (and
  onnxruntime f32 in full mode), 16 ROIs;
- amfp end to end per part (`amfp identify`: decode, envelope, ROIs, inference, vote) on each
  engine with the full 16-ROI vote and with sequential early stopping, and the daemon `amfp run`
  on a watched directory on each engine (peak RSS);
- candidate layer types and shapes (random weights) in tract and onnxruntime, for the next
  model's design (full mode, or --layers).

It reports medians, ratios against onnxruntime, GFLOP/s (FLOPs counted from the ONNX graph)
against the CPU's nominal peak and against a measured SGEMM, peak RSS, start-up (load and
optimise) and parts per second; writes OUT/bench.json, OUT/BENCHMARKS.section.md and
OUT/bench.png, and in full mode (unless --no-write) the generated section of BENCHMARKS.md and
benches/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = {"f32": REPO / "models" / "amfp-synth-v3.onnx", "int8": REPO / "models" / "amfp-synth-v3.int8.onnx"}
FLEET = REPO / "models" / "amfp-synth-v3.fleet.toml"
EMPTY_CONFIG = REPO / "tests" / "data" / "empty.toml"
BEGIN, END = "<!-- bench.py:begin -->", "<!-- bench.py:end -->"
SEED = 8


# ---------------------------------------------------------------------------------------------
# child processes: each engine runs in its own, its peak RSS from wait4


def vm_hwm_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_child(cmd: list[str], env: dict | None = None, timeout: float = 1800) -> tuple[str, float, float]:
    """Runs cmd; returns (stdout, wall seconds, peak RSS MiB of that child alone).

    The peak is the child's VmHWM, polled every 5 ms until it exits: wait4's ru_maxrss would
    carry the forking driver's own high-water mark over the exec."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **(env or {})}, text=True)
        deadline = time.monotonic() + timeout
        hwm = 0
        while True:
            hwm = max(hwm, vm_hwm_kib(p.pid))
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                p.kill()
                os.wait4(p.pid, 0)
                raise RuntimeError(f"timed out: {' '.join(cmd)}")
            time.sleep(0.005)
        wall = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        so, se = out.read(), err.read()
    if p.returncode not in (0, 3):  # amfp identify: 3 = some part from an unknown source
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{se[-3000:]}")
    return so, wall, hwm / 1024


def child_json(cmd: list[str], env: dict | None = None) -> dict:
    so, wall, rss = run_child(cmd, env)
    r = json.loads(so.strip().splitlines()[-1])
    r["child_peak_rss_mib"] = rss
    r["child_wall_s"] = wall
    return r


def py_worker(kind: str, **kw) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind]
    for k, v in kw.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def rss_kib_self() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def median(xs):
    return float(statistics.median(xs)) if xs else float("nan")


# ---------------------------------------------------------------------------------------------
# workers (run as children of the driver)


def worker_ort(a) -> dict:
    import numpy as np

    rss0 = rss_kib_self()
    import onnxruntime as ort

    x = load_rois(a.input, a.model, a.rois)
    t = time.perf_counter()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    s = ort.InferenceSession(str(a.model), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    load_s = time.perf_counter() - t
    out = None
    for _ in range(a.warmup):
        out = s.run(None, {name: x})[0]
    times = []
    for _ in range(a.reps):
        t = time.perf_counter()
        out = s.run(None, {name: x})[0]
        times.append(time.perf_counter() - t)
    if a.logits_out:
        np.save(a.logits_out, out)
    return {"engine": "onnxruntime", "version": ort.__version__, "threads": a.threads, "rois": a.rois, "load_s": load_s,
            "times_s": times, "median_s": median(times), "rss_before_load_kb": rss0, "peak_rss_kb": rss_kib_self()}


def load_rois(path, model, rois):
    import numpy as np

    if path:
        x = np.load(path)
    else:
        import onnx

        m = onnx.load(str(model), load_external_data=False)
        dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim][1:]
        x = np.random.default_rng(SEED).standard_normal((1, *dims)).astype(np.float32)
    reps = -(-rois // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:rois].astype(np.float32))


def worker_torch(a) -> dict:
    rss0 = rss_kib_self()
    import timm
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(a.threads)
    t = time.perf_counter()
    m = timm.create_model("efficientnetv2_rw_m", pretrained=False, num_classes=21, in_chans=3).eval()
    load_s = time.perf_counter() - t
    x = torch.randn(a.rois, 3, a.px, a.px)
    times = []
    with torch.inference_mode():
        for _ in range(a.warmup):
            m(x)
        for _ in range(a.reps):
            t = time.perf_counter()
            m(x)
            times.append(time.perf_counter() - t)
        if a.onnx_out:  # the same graph for onnxruntime and the FLOP count
            torch.onnx.export(m, (x[:1],), a.onnx_out, dynamo=False, opset_version=17, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    return {"engine": "pytorch", "version": torch.__version__, "timm": timm.__version__, "threads": a.threads,
            "rois": a.rois, "px": a.px, "load_s": load_s, "times_s": times, "median_s": median(times),
            "rss_before_load_kb": rss0, "peak_rss_kb": rss_kib_self()}


def worker_gemm(a) -> dict:
    """Practical f32 peak: numpy's SGEMM (OpenBLAS) at a.threads threads (set by the driver's env)."""
    import numpy as np

    n = a.px
    rng = np.random.default_rng(SEED)
    x, y = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    x @ y
    times = []
    for _ in range(a.reps):
        t = time.perf_counter()
        x @ y
        times.append(time.perf_counter() - t)
    return {"engine": "numpy-sgemm", "n": n, "threads": a.threads, "median_s": median(times),
            "gflops": 2 * n**3 / median(times) / 1e9}


def worker_layer(a) -> dict:
    """Exports one candidate layer stack (random weights) to ONNX, f32 and optionally int8 QDQ."""
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "training"))
    torch.manual_seed(SEED)
    net, shape = build_candidate(a.layer)
    net.eval()
    x = torch.randn(1, *shape)
    torch.onnx.export(net, (x,), a.onnx_out, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    if a.int8_out:
        from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

        from amfp_train.quantize import RoiReader

        xi = np.random.default_rng(SEED).standard_normal((8, *shape)).astype(np.float32)
        # the int8 form tract runs on integer kernels (see INT8_FORMATS and docs/performance.md)
        quantize_static(a.onnx_out, a.int8_out, RoiReader([xi]), quant_format=QuantFormat.QOperator, per_channel=False,
                        op_types_to_quantize=["Conv", "Relu"], activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        clear_value_info(a.int8_out)
    return {"layer": a.layer, "shape": list(shape)}


INT8_FORMATS = {
    # name: (quant_format, per_channel, op types)  -- onnxruntime.quantization.quantize_static
    "QDQ per-channel, all ops (shipped)": ("QDQ", True, None),
    "QDQ per-tensor, all ops": ("QDQ", False, None),
    "QOperator per-channel, Conv+Relu": ("QOperator", True, ["Conv", "Relu"]),
    "QOperator per-tensor, Conv+Relu": ("QOperator", False, ["Conv", "Relu"]),
}


def worker_quant(a) -> dict:
    """The f32 model quantized in each of INT8_FORMATS, calibrated on the ROIs in a.input (a glob)."""
    import glob

    import numpy as np
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    sys.path.insert(0, str(REPO / "training"))
    from amfp_train.quantize import RoiReader

    x = np.concatenate([np.load(f) for f in sorted(glob.glob(a.input))])
    batches = [x[i:i + 16] for i in range(0, len(x), 16)]
    src = onnx.load(a.model)
    out = {}
    for i, (name, (fmt, pc, ops)) in enumerate(INT8_FORMATS.items()):
        path = str(Path(a.onnx_out) / f"int8-{i}.onnx")
        quantize_static(a.model, path, RoiReader(list(batches)), quant_format=getattr(QuantFormat, fmt), per_channel=pc,
                        op_types_to_quantize=ops, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        q = onnx.load(path)
        del q.graph.value_info[:]
        del q.metadata_props[:]
        for p in src.metadata_props:
            q.metadata_props.add(key=p.key, value=p.value)
        onnx.save(q, path)
        out[name] = path
    return {"models": out, "calibration_rois": len(x)}


def clear_value_info(path):
    import onnx

    m = onnx.load(path)
    del m.graph.value_info[:]
    onnx.save(m, path)


# Candidate layer stacks for the next edge model: name -> (module builder, input shape).
# Each is a realistic slice of a 192 px gray-ROI net; FLOPs come from the exported graph.
LAYERS = {
    "conv3x3 16->16 @96": ("conv", dict(cin=16, cout=16, k=3, s=1, px=96)),
    # tract 0.23 runs a convolution whose output rows are at least 128 wide as a direct spatial
    # convolution (no im2col): the same layer at 128 px shows what that path is worth.
    "conv3x3 16->16 @128 (direct spatial)": ("conv", dict(cin=16, cout=16, k=3, s=1, px=128)),
    "conv3x3 32->32 @48": ("conv", dict(cin=32, cout=32, k=3, s=1, px=48)),
    "conv3x3 64->64 @24": ("conv", dict(cin=64, cout=64, k=3, s=1, px=24)),
    "conv3x3 128->128 @12": ("conv", dict(cin=128, cout=128, k=3, s=1, px=12)),
    "conv3x3 s2 32->64 @48": ("conv", dict(cin=32, cout=64, k=3, s=2, px=48)),
    "conv1x1 64->128 @24": ("conv", dict(cin=64, cout=128, k=1, s=1, px=24)),
    "stem conv3x3 s2 1->16 @192": ("conv", dict(cin=1, cout=16, k=3, s=2, px=192)),
    "depthwise3x3 64 @24": ("dw", dict(c=64, px=24)),
    "dw3x3+pw1x1 64->64 @24 (MobileNet)": ("dwsep", dict(cin=64, cout=64, px=24)),
    "edge net (shipped) 192 px": ("edge", dict(roi=192, widths=(16, 32, 64, 96, 128), depths=(1, 2, 2, 2, 2), stem=2)),
    "edge net narrow 192 px": ("edge", dict(roi=192, widths=(16, 32, 48, 64, 96), depths=(1, 1, 2, 2, 2), stem=2)),
    "edge net wide 192 px": ("edge", dict(roi=192, widths=(24, 48, 96, 128, 192), depths=(1, 2, 2, 2, 2), stem=2)),
    "edge net 96 px (21.2 um/px)": ("edge", dict(roi=96, widths=(16, 32, 64, 96, 128), depths=(1, 2, 2, 2, 2), stem=1)),
}


def build_candidate(name):
    import torch
    from torch import nn

    kind, p = LAYERS[name]
    if kind == "conv":
        # a stack of 4 identical convs (stride 1) or one (stride 2), conv+ReLU, so that one op type dominates
        n = 4 if p["s"] == 1 and p["cin"] == p["cout"] else 1
        layers = []
        for i in range(n):
            layers += [nn.Conv2d(p["cin"], p["cout"], p["k"], p["s"], p["k"] // 2), nn.ReLU()]
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), (p["cin"], p["px"], p["px"])
    if kind == "dw":
        layers = []
        for _ in range(4):
            layers += [nn.Conv2d(p["c"], p["c"], 3, 1, 1, groups=p["c"]), nn.ReLU()]
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), (p["c"], p["px"], p["px"])
    if kind == "dwsep":
        layers = []
        for _ in range(4):
            layers += [nn.Conv2d(p["cin"], p["cin"], 3, 1, 1, groups=p["cin"]), nn.ReLU(),
                       nn.Conv2d(p["cin"], p["cout"], 1), nn.ReLU()]
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), (p["cin"], p["px"], p["px"])
    from amfp_train.models import EdgeNet

    m = EdgeNet(21, 1, list(p["widths"]), list(p["depths"]), pool="avgstd", stem_stride=p["stem"])
    # Random BatchNorm statistics, so that every folded bias is its own tensor: fresh BN layers
    # fold to all-zero biases, which the exporter shares between convs of one width, and
    # onnxruntime's QOperator quantizer cannot quantize a bias it has already replaced.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.normal_(0.0, 0.1)
                mod.bias.normal_(0.0, 0.1)
    m.eval()
    m.fuse()
    return m, (1, p["roi"], p["roi"])


# ---------------------------------------------------------------------------------------------
# FLOPs from the ONNX graph


def count_flops(path: Path, batch: int) -> float:
    """FLOPs (2 per multiply-add) of Conv, Gemm and MatMul for `batch` inputs, from ONNX shapes."""
    import onnx
    from onnx import numpy_helper, shape_inference

    m = onnx.load(str(path))
    inp = m.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    dims[0].ClearField("dim_param")
    dims[0].dim_value = batch
    del m.graph.value_info[:]
    for o in m.graph.output:
        o.type.tensor_type.shape.dim[0].ClearField("dim_param")
    m = shape_inference.infer_shapes(m)
    shapes = {}
    for v in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        shapes[v.name] = [d.dim_value for d in v.type.tensor_type.shape.dim]
    inits = {t.name: list(t.dims) for t in m.graph.initializer}
    # QDQ: a weight reaches Conv through DequantizeLinear; follow it to the initializer
    producer = {o: n for n in m.graph.node for o in n.output}

    def wshape(name):
        while name not in inits and name in producer and producer[name].op_type in ("DequantizeLinear", "QuantizeLinear", "Identity"):
            name = producer[name].input[0]
        return inits.get(name) or shapes.get(name)

    flops = 0.0
    for n in m.graph.node:
        if n.op_type == "Conv":
            out = shapes.get(n.output[0])
            w = wshape(n.input[1])
            if out and w:
                # out [N, Co, H, W]; w [Co, Ci/g, kh, kw]
                flops += 2 * out[0] * out[1] * out[2] * out[3] * w[1] * w[2] * w[3]
        elif n.op_type in ("Gemm", "MatMul"):
            out = shapes.get(n.output[0])
            w = wshape(n.input[1])
            if out and w:
                k = w[1] if (n.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in n.attribute)) else w[0]
                prod = 1
                for d in out:
                    prod *= d
                flops += 2 * prod * k
    return flops


# ---------------------------------------------------------------------------------------------
# the machine


def machine_info() -> dict:
    cpu = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", cpu).group(1)
    mhz = [float(v) for v in re.findall(r"cpu MHz\s*:\s*([\d.]+)", cpu)]
    flags = re.search(r"flags\s*:\s*(.*)", cpu).group(1).split()
    cores = os.cpu_count()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    fma_units = 2  # two FMA pipes per core on current x86 server cores (assumption, stated in the report)
    ghz = max(mhz) / 1000 if mhz else float("nan")
    load = os.getloadavg()
    return {"cpu": model, "cores": cores, "ghz": ghz, "simd_f32_lanes": lanes, "fma_units": fma_units,
            "peak_gflops_per_core": lanes * 2 * fma_units * ghz, "peak_gflops": lanes * 2 * fma_units * ghz * cores,
            "load_avg_at_start": load, "python": platform.python_version()}


def busy_processes() -> list[str]:
    r = subprocess.run(["pgrep", "-fa", "cargo|rustc|qemu"], capture_output=True, text=True)
    return [ln for ln in r.stdout.splitlines() if ln.strip() and "bench.py" not in ln]


# ---------------------------------------------------------------------------------------------
# the driver


def build(a) -> None:
    if a.no_build:
        return
    # amfp as it ships; tract_bench with tract's multithread executor, which shipped builds
    # leave out (Cargo.toml `tract-executor`), so that its rows can be measured.
    subprocess.run(["cargo", "build", "--profile", a.profile, "--locked", "--bin", "amfp"], cwd=REPO, check=True)
    subprocess.run(["cargo", "build", "--profile", a.profile, "--locked", "--features", "tract-executor", "--example", "tract_bench"],
                   cwd=REPO, check=True)


def tract_cmd(a, model, **kw) -> list[str]:
    cmd = [str(a.tract_bench), "--model", str(model)]
    for k, v in kw.items():
        if v is True:
            cmd.append(f"--{k.replace('_', '-')}")
        elif v is not None and v is not False:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    return cmd


def amfp_env():
    return {"AMFP_CONFIG": str(EMPTY_CONFIG), "RUST_LOG": "warn"}


def simulate(a, out: Path) -> list[Path]:
    parts = out / "parts"
    if parts.exists():
        shutil.rmtree(parts)
    cmd = [str(a.amfp), "synth", "--out", str(parts), "--fleet", str(FLEET), "--parts-per-machine", "1",
           "--seed", str(SEED), "--threads", "2"]
    if a.quick:
        cmd += ["--machines", "S450-1,M2-1,F3B-1,4200-1"]
    run_child(cmd, amfp_env())
    return sorted((parts / "scans").glob("*.png"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI: every stage with tiny repetitions; not the numbers")
    ap.add_argument("--out", type=Path, default=REPO / "build" / "bench")
    ap.add_argument("--profile", default="ci", help="cargo profile of amfp and tract_bench (default ci)")
    ap.add_argument("--no-build", action="store_true", help="use the binaries as they are")
    ap.add_argument("--no-write", action="store_true", help="full mode: leave BENCHMARKS.md and benches/results alone")
    ap.add_argument("--write", action="store_true", help="quick mode: write BENCHMARKS.md and benches/results anyway (marked quick)")
    ap.add_argument("--layers", action="store_true", help="the candidate-layer study (on by default in full mode)")
    ap.add_argument("--skip-paper", action="store_true", help="skip the EfficientNetV2-M rows")
    # worker mode (internal)
    ap.add_argument("--worker", choices=["ort", "torch", "gemm", "layer", "quant"], help=argparse.SUPPRESS)
    for k in ("model", "input", "logits-out", "onnx-out", "int8-out", "layer"):
        ap.add_argument(f"--{k}", help=argparse.SUPPRESS)
    for k, d in (("threads", 1), ("rois", 16), ("reps", 5), ("warmup", 1), ("px", 448)):
        ap.add_argument(f"--{k}", type=int, default=d, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        r = {"ort": worker_ort, "torch": worker_torch, "gemm": worker_gemm, "layer": worker_layer, "quant": worker_quant}[a.worker](a)
        print(json.dumps(r), flush=True)
        return 0
    return drive(a)


def drive(a) -> int:
    t_start = time.perf_counter()
    a.out.mkdir(parents=True, exist_ok=True)
    target = REPO / "target" / a.profile
    a.amfp = target / "amfp"
    a.tract_bench = target / "examples" / "tract_bench"
    build(a)
    info = machine_info()
    info["busy_at_start"] = busy_processes()
    info["mode"] = "quick" if a.quick else "full"
    info["profile"] = a.profile
    info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    info["dirty"] = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                        capture_output=True, text=True).stdout.strip())
    reps = 3 if a.quick else 15
    warm = 1 if a.quick else 3
    res: dict = {"machine": info, "model_only": [], "profile": {}, "paper": [], "e2e": [], "layers": []}
    log = lambda *m: print(f"[{time.perf_counter() - t_start:6.1f}s]", *m, flush=True)  # noqa: E731

    # 1. the same ROIs for everyone: 16 seeded ROIs of one simulated part, as amfp cuts them
    log("simulating parts")
    scans = simulate(a, a.out)
    rois_dir = a.out / "rois"
    rois_dir.mkdir(exist_ok=True)
    run_child([str(a.amfp), "identify", "--json", "--early-stop", "off", "--threads", "1", "--model", str(MODELS["f32"]),
               "--save-rois", str(rois_dir), str(scans[0])], amfp_env())
    rois = rois_dir / f"{scans[0].stem}.rois.npy"

    # 2. GFLOP per 16-ROI vote, from the graph
    flops = {k: count_flops(p, 16) for k, p in MODELS.items()}
    res["flops_16"] = flops
    log(f"FLOPs per 16 ROIs: {flops['f32'] / 1e9:.2f} GFLOP")

    # 3. practical peak: SGEMM
    for t in (1, 2):
        g = child_json(py_worker("gemm", threads=t, px=1024 if a.quick else 2048, reps=reps),
                       {"OPENBLAS_NUM_THREADS": str(t), "OMP_NUM_THREADS": str(t), "MKL_NUM_THREADS": str(t)})
        res.setdefault("sgemm", {})[t] = g
    log(f"sgemm GFLOP/s: {res['sgemm'][1]['gflops']:.0f} (1 thr), {res['sgemm'][2]['gflops']:.0f} (2 thr)")

    # 4. model only: tract (each way of using 1 or 2 threads) and onnxruntime, same file, same ROIs
    # (mode, threads, ROIs per call, extra flags, label)
    configs = [
        ("seq", 1, None, {}, "tract, one batch of 16"),
        ("batches", 1, 1, {}, "tract, 16 calls of 1 ROI"),
        ("amfp", 1, 4, {"batched": True}, "amfp Model before issue 8 (batch-4 plan)"),
        ("amfp", 1, 4, {}, "amfp Model (per-ROI plan, default)"),
        ("executor", 2, None, {}, "tract, one batch of 16, multithread executor"),
        ("split", 2, 8, {}, "tract, 2 batches of 8 on 2 threads"),
        ("split", 2, 1, {}, "tract, 1-ROI calls on 2 threads"),
        ("amfp", 2, 4, {"batched": True}, "amfp Model, batch-4 plan, executor"),
        ("amfp", 2, 4, {}, "amfp Model, per-ROI plan, 2 threads"),
        ("amfp", 1, 16, {"engine": "onnxruntime"}, "amfp Model on onnxruntime, one batch of 16"),
        ("amfp", 2, 16, {"engine": "onnxruntime"}, "amfp Model on onnxruntime, one batch of 16"),
    ]
    # tract's multithread executor is only in a tract_bench built with `--features tract-executor`
    # (build() does that; CI's quick run uses its own build, without it).
    if not child_json(tract_cmd(a, next(iter(MODELS.values())), features=True))["tract_executor"]:
        if not a.quick:
            sys.exit(f"{a.tract_bench} lacks tract's multithread executor: rebuild it with --features tract-executor")
        log("quick mode: tract_bench built without --features tract-executor, its executor rows are left out")
        configs = [c for c in configs if c[0] != "executor" and not (c[0] == "amfp" and c[1] > 1 and c[3].get("batched"))]
    for kind, model in MODELS.items():
        for t in (1, 2):
            lo = a.out / f"ort-{kind}-{t}.npy"
            r = child_json(py_worker("ort", model=model, input=rois, threads=t, reps=reps, warmup=warm, logits_out=lo))
            r.update(kind=kind, label="onnxruntime")
            res["model_only"].append(r)
            log(f"{kind} ORT {t} thr: {r['median_s'] * 1e3:.1f} ms")
        for i, (mode, t, batch, extra, label) in enumerate(configs):
            lo = a.out / f"tract-{kind}-{i}.npy"
            r = child_json(tract_cmd(a, model, input=rois, mode=mode, threads=t, batch=batch, reps=reps, warmup=warm,
                                     logits_out=lo, **extra))
            r.update(kind=kind, label=label)
            r["parity"] = parity(lo, a.out / f"ort-{kind}-1.npy")
            res["model_only"].append(r)
            log(f"{kind} {label} {t} thr: {r['median_s'] * 1e3:.1f} ms  parity {r['parity']}")
        res["profile"][kind] = {}
        for label, mode, batch in (("one batch of 16", "seq", None), ("one ROI (x16)", "batches", 1)):
            prof = child_json(tract_cmd(a, model, input=rois, mode=mode, batch=batch, threads=1, reps=1, warmup=0, profile=True, dump=True))
            per = {k: v * (16 if batch == 1 else 1) for k, v in prof["profile_s"].items()}
            res["profile"][kind][label] = {"per_op_s": per, "ops": prof["ops"]}

    # 4b. int8 formats: what tract does with each (speed here; agreement with f32 on every ROI
    # of every simulated part; calibrated on the same ROIs, so this is about speed, not accuracy)
    log("int8 formats")
    all_rois = rois_dir / "all"
    all_rois.mkdir(exist_ok=True)
    run_child([str(a.amfp), "identify", "--json", "--early-stop", "off", "--threads", "2", "--model", str(MODELS["f32"]),
               "--save-rois", str(all_rois), *map(str, scans)], amfp_env())
    qdir = a.out / "int8"
    qdir.mkdir(exist_ok=True)
    q = child_json(py_worker("quant", model=MODELS["f32"], input=str(all_rois / "*.rois.npy"), onnx_out=qdir))
    xall = a.out / "all-rois.npy"
    concat_npy(sorted(all_rois.glob("*.rois.npy")), xall)
    ref = a.out / "f32-all.npy"
    child_json(py_worker("ort", model=MODELS["f32"], input=xall, rois=n_rows(xall), threads=2, reps=1, warmup=0, logits_out=ref))
    res["int8_formats"] = []
    for name, path in q["models"].items():
        row = {"format": name, "calibration_rois": q["calibration_rois"], "rois": n_rows(xall)}
        lo = a.out / "int8-all.npy"
        child_json(py_worker("ort", model=path, input=xall, rois=n_rows(xall), threads=2, reps=1, warmup=0, logits_out=lo))
        row["argmax_vs_f32"] = parity(lo, ref)["argmax_agree"]
        row["ort_1"] = child_json(py_worker("ort", model=path, input=rois, threads=1, reps=reps, warmup=warm))["median_s"]
        for label, extra in (("tract_per_roi", {}), ("tract_batch4", {"batched": True})):
            row[label] = child_json(tract_cmd(a, path, input=rois, mode="amfp", threads=1, batch=4, reps=reps, warmup=warm, **extra))["median_s"]
        prof = child_json(tract_cmd(a, path, input=rois, mode="batches", batch=4, threads=1, reps=1, warmup=0, profile=True))
        row["profile"] = prof["profile_s"]
        res["int8_formats"].append(row)
        log(f"int8 {name}: tract per-ROI {row['tract_per_roi'] * 1e3:.0f} ms, batch-4 {row['tract_batch4'] * 1e3:.0f} ms, "
            f"ORT {row['ort_1'] * 1e3:.0f} ms, argmax vs f32 {row['argmax_vs_f32']:.3f}")

    # 5. the paper's model (cost only)
    if not a.skip_paper:
        px, n = (224, 2) if a.quick else (448, 16)
        onnx_path = a.out / "effnetv2m.onnx"
        r = child_json(py_worker("torch", threads=2, rois=n, px=px, reps=1 if a.quick else 3, warmup=1 if a.quick else 1,
                                 onnx_out=onnx_path))
        r.update(label=f"PyTorch eager EfficientNetV2-M {px} px, {n} ROIs, 2 thr", flops=count_flops(onnx_path, n))
        res["paper"].append(r)
        log(f"paper PyTorch: {r['median_s']:.2f} s")
        if not a.quick:
            r2 = child_json(py_worker("ort", model=onnx_path, threads=2, rois=n, reps=3, warmup=1))
            r2.update(label=f"onnxruntime f32 EfficientNetV2-M {px} px, {n} ROIs, 2 thr", flops=r["flops"])
            res["paper"].append(r2)
            log(f"paper ORT: {r2['median_s']:.2f} s")

    # 6. amfp end to end per part, and the daemon's RSS
    for engine, kind, stop, threads in [(e, k, s, t) for e in ("onnxruntime", "tract") for k in ("int8", "f32")
                                        for s in ("off", "sequential") for t in (1, 2)]:
        runs = []
        for _ in range(1 if a.quick else 3):
            so, wall, rss = run_child([str(a.amfp), "identify", "--json", "--early-stop", stop, "--threads", str(threads),
                                       "--engine", engine, "--model", str(MODELS[kind]), *map(str, scans)], amfp_env())
            results = [json.loads(line) for line in so.splitlines()]
            runs.append((wall, rss, results))
        wall = median([w for w, _, _ in runs])
        results = runs[0][2]
        per_part = [r["timing_ms"] for r in results]
        assert {r["model"]["engine"]["name"] for r in results} == {engine}, f"amfp identify did not run on {engine}"
        res["e2e"].append({
            "engine": engine, "kind": kind, "early_stop": stop, "threads": threads, "parts": len(results), "wall_s": wall,
            "parts_per_s": len(results) / wall, "peak_rss_mib": max(r for _, r, _ in runs),
            "median_total_ms": median([t["total"] for t in per_part]),
            "median_capture_ms": median([t["capture"] for t in per_part]),
            "median_preprocess_ms": median([t["preprocess"] for t in per_part]),
            "median_inference_ms": median([t["inference"] for t in per_part]),
            "mean_rois": sum(r["rois"]["used"] for r in results) / len(results),
            "verdicts": {v: sum(r["verdict"] == v for r in results) for v in ("identified", "unknown", "rejected")},
        })
        e = res["e2e"][-1]
        log(f"e2e {engine} {kind} stop={stop} thr={threads}: {e['median_total_ms']:.0f} ms/part, {e['parts_per_s']:.2f} parts/s, "
            f"{e['mean_rois']:.1f} ROIs, {e['peak_rss_mib']:.0f} MiB")
    res["daemon"] = {engine: daemon_rss(a, scans, engine) for engine in ("onnxruntime", "tract")}
    for engine, d in res["daemon"].items():
        log(f"amfp run on {engine} (directory, {d['parts']} parts): peak RSS {d['peak_rss_mib']:.0f} MiB")

    # 7. candidate layers for the next model
    if a.layers or not a.quick:
        res["layers"] = layer_study(a, reps, warm)
    elif a.quick:
        res["layers"] = layer_study(a, 1, 0, only=["conv3x3 32->32 @48", "depthwise3x3 64 @24"])

    res["machine"]["load_avg_at_end"] = os.getloadavg()
    res["machine"]["busy_at_end"] = busy_processes()
    res["elapsed_s"] = time.perf_counter() - t_start
    (a.out / "bench.json").write_text(json.dumps(res, indent=1, default=str))
    md = render(res, a)
    (a.out / "BENCHMARKS.section.md").write_text(md)
    chart(res, a.out / "bench.png")
    if (not a.quick and not a.no_write) or a.write:
        results = REPO / "benches" / "results"
        results.mkdir(exist_ok=True)
        shutil.copy(a.out / "bench.json", results / "bench.json")
        shutil.copy(a.out / "bench.png", results / "bench.png")
        write_section(REPO / "BENCHMARKS.md", md)
        log("wrote BENCHMARKS.md and benches/results/")
    log(f"done: {a.out / 'BENCHMARKS.section.md'}")
    return 0


def concat_npy(files, out):
    import numpy as np

    np.save(out, np.concatenate([np.load(f) for f in files]))


def n_rows(npy):
    import numpy as np

    return int(np.load(npy, mmap_mode="r").shape[0])


def py_ort(r: dict) -> bool:
    """A row of Python's onnxruntime (the peer), not amfp's Model on onnxruntime."""
    return r["engine"] == "onnxruntime" and r.get("mode") != "amfp"


def parity(tract_npy: Path, ort_npy: Path) -> dict:
    import numpy as np

    t, o = np.load(tract_npy), np.load(ort_npy)
    sm = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)  # noqa: E731
    return {"max_prob_diff": float(np.abs(sm(t) - sm(o)).max()), "argmax_agree": float((t.argmax(1) == o.argmax(1)).mean())}


def daemon_rss(a, scans, engine: str) -> dict:
    d = a.out / f"daemon-{engine}"
    if d.exists():
        shutil.rmtree(d)
    (d / "in").mkdir(parents=True)
    for s in scans:
        shutil.copy(s, d / "in" / s.name)
    n = len(scans)
    so, wall, rss = run_child([str(a.amfp), "run", "--engine", engine, "--dir", str(d / "in"), "--parts", str(n),
                               "--state-dir", str(d / "state")],
                              {**amfp_env(), "AMFP__SOURCE__SETTLE_MS": "0", "AMFP__SOURCE__POLL_MS": "50"})
    return {"parts": n, "wall_s": wall, "peak_rss_mib": rss, "results": len(so.splitlines())}


def layer_study(a, reps, warm, only=None) -> list[dict]:
    out = []
    d = a.out / "layers"
    d.mkdir(exist_ok=True)
    for i, name in enumerate(only or LAYERS):
        f32, i8 = d / f"l{i}.onnx", d / f"l{i}.int8.onnx"
        child_json(py_worker("layer", layer=name, onnx_out=f32, int8_out=i8))
        row = {"layer": name, "flops_16": count_flops(f32, 16)}
        for kind, path in (("f32", f32), ("int8", i8)):
            for t in (1, 2):
                row[f"ort_{kind}_{t}"] = child_json(py_worker("ort", model=path, threads=t, reps=reps, warmup=warm))["median_s"]
            # tract as amfp runs it: f32 per ROI (lazy im2col), int8 in batches of 4 (its im2col is eager anyway)
            b = 1 if kind == "f32" else 4
            row[f"tract_{kind}_1"] = child_json(tract_cmd(a, path, mode="batches", batch=b, threads=1, reps=reps, warmup=warm))["median_s"]
            row[f"tract_{kind}_2"] = child_json(tract_cmd(a, path, mode="split", batch=b, threads=2, reps=reps, warmup=warm))["median_s"]
        out.append(row)
        print(f"  layer {name}: tract/ORT f32 1thr {row['tract_f32_1'] / row['ort_f32_1']:.1f}x, "
              f"{row['flops_16'] / row['tract_f32_1'] / 1e9:.0f} GFLOP/s tract", flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# report


def fmt_ms(s):
    return f"{s * 1e3:.1f}" if s < 10 else f"{s * 1e3:.0f}"


def render(res, a) -> str:
    m = res["machine"]
    quiet = m["load_avg_at_start"][0] < 0.3 and not m["busy_at_start"]
    cmd = "python3 benches/bench.py" + (" --quick" if a.quick else "")
    L = []
    L.append("## Inference: tract against onnxruntime and the paper's pipeline")
    L.append("")
    L.append("Generated by `" + cmd + "` (benches/bench.py; do not edit by hand: rerun it). Raw numbers: "
             "`benches/results/bench.json`; chart: `benches/results/bench.png`.")
    L.append("")
    if a.quick:
        L.append("**QUICK MODE: tiny repetitions to keep the harness working; these are not the numbers.**")
        L.append("")
    L.append(f"- Machine: {m['cpu']}, {m['cores']} cores, {m['ghz']:.2f} GHz (cpuinfo), AVX-512: "
             f"{'yes' if m['simd_f32_lanes'] == 16 else 'no'}; nominal f32 peak {m['peak_gflops']:.0f} GFLOP/s "
             f"({m['cores']} cores x {m['fma_units']} FMA units x {m['simd_f32_lanes']} lanes x 2 FLOP x {m['ghz']:.2f} GHz); "
             f"numpy SGEMM reaches {res['sgemm'][1]['gflops']:.0f} GFLOP/s on 1 thread, {res['sgemm'][2]['gflops']:.0f} on 2.")
    L.append(f"- Load average at start {m['load_avg_at_start'][0]:.2f}, at end {m['load_avg_at_end'][0]:.2f}; "
             f"{'quiet machine' if quiet else 'NOT quiet (other builds/tests were running): read ratios, not absolute times'}. "
             f"Commit {m['commit']}{' + uncommitted changes' if m['dirty'] else ''}, cargo profile `{m['profile']}`, "
             f"fixed seed {SEED}; {res['elapsed_s'] / 60:.1f} min in all.")
    g16 = res["flops_16"]["f32"]
    L.append(f"- Shipped model amfp-synth-v3: {g16 / 1e9:.2f} GFLOP per 16-ROI vote (Conv/Gemm counted from the ONNX graph, "
             "2 FLOP per multiply-add); the same 16 ROIs (one simulated part, as `amfp identify --save-rois` cut them) for every engine.")
    L.append("")
    L.append("### Model only: 16 ROIs of the shipped model")
    L.append("")
    L.append("Median of the repeated runs; ratio = time / onnxruntime's at the same thread count and precision. "
             "Start-up = load + optimise (tract) or session creation (onnxruntime). Peak RSS of the process "
             "(onnxruntime's includes the Python interpreter and numpy; \"before load\" is the same process before the model).")
    L.append("")
    L.append("| precision | engine / mode | threads | 16 ROIs (ms) | vs ORT | GFLOP/s | % of peak | start-up (ms) | peak RSS (MiB) | before load (MiB) | parity vs ORT |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for kind in ("f32", "int8"):
        ort = {r["threads"]: r["median_s"] for r in res["model_only"] if r["kind"] == kind and py_ort(r)}
        for r in [r for r in res["model_only"] if r["kind"] == kind]:
            t = r["median_s"]
            par = r.get("parity")
            ps = "" if not par else (f"max dp {par['max_prob_diff']:.1e}" if kind == "f32" else f"argmax {par['argmax_agree']:.3f}")
            gf = g16 / t / 1e9
            L.append(f"| {kind} | {r['label']} | {r['threads']} | {fmt_ms(t)} | {t / ort[r['threads']]:.2f} | "
                     f"{gf:.0f} | {100 * gf / (m['peak_gflops_per_core'] * r['threads']):.0f} | "
                     f"{r['load_s'] * 1e3:.0f} | {r['peak_rss_kb'] / 1024:.0f} | {r['rss_before_load_kb'] / 1024:.0f} | {ps} |")
    L.append("")
    L.append("(GFLOP/s counts the f32 model's FLOPs for int8 rows too; % of peak is against the nominal f32 peak of the "
             "threads used, 1 thread = one core's peak, so int8 kernels with VNNI can exceed 100 %.)")
    L.append("")
    L.append("Rows: plain tract on the file (`examples/tract_bench.rs`: one call of 16; 16 one-ROI calls; the multithread "
             "executor, a rayon pool inside each op; calls shared out between 2 threads against one plan) and "
             "`amfp::model::Model` as `amfp identify` runs it (calls of `identify.batch` = 4 ROIs; `LoadOptions`: "
             "per-ROI plan, the default since issue 8, or the batch-4 plan it had before; 2 threads = the call's ROIs "
             "shared out between 2 threads, or with the batch plan tract's executor).")
    L.append("")
    for kind in ("f32", "int8"):
        for label, prof in res["profile"].get(kind, {}).items():
            tot = sum(prof["per_op_s"].values())
            top = sorted(prof["per_op_s"].items(), key=lambda kv: -kv[1])[:6]
            L.append(f"- Where tract's time goes, {kind}, {label}, 1 thread ({fmt_ms(tot)} ms summed over ops): "
                     + ", ".join(f"{k} {100 * v / tot:.0f} %" for k, v in top) + ".")
    L.append("")
    if res.get("int8_formats"):
        f32_amfp = next((r["median_s"] for r in res["model_only"] if r["kind"] == "f32" and r["label"].startswith("amfp Model (per-ROI")
                         and r["threads"] == 1), None)
        L.append("### int8 in tract: formats (shipped f32 model re-quantized, 16 ROIs, 1 thread)")
        L.append("")
        L.append(f"Each format made by `onnxruntime.quantization.quantize_static` from `models/amfp-synth-v3.onnx`, calibrated on "
                 f"the benchmark's own {res['int8_formats'][0]['calibration_rois']} ROIs (speed only: the shipped int8 model is "
                 "calibrated on training ROIs). Agreement = same argmax as the f32 model (onnxruntime) on those ROIs. "
                 "tract through `amfp::model::Model`, per-ROI plan (default) or batch-4 plan.")
        L.append("")
        L.append("| format | tract per-ROI (ms) | tract batch-4 (ms) | vs tract f32 per-ROI | onnxruntime (ms) | tract best / ORT | argmax = f32 | tract's top ops (batch 4) |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---|")
        for r in res["int8_formats"]:
            best = min(r["tract_per_roi"], r["tract_batch4"])
            tot = sum(r["profile"].values())
            top = ", ".join(f"{k} {100 * v / tot:.0f} %" for k, v in sorted(r["profile"].items(), key=lambda kv: -kv[1])[:4])
            vs = f"{best / f32_amfp:.2f}" if f32_amfp else ""
            L.append(f"| {r['format']} | {fmt_ms(r['tract_per_roi'])} | {fmt_ms(r['tract_batch4'])} | {vs} | {fmt_ms(r['ort_1'])} | "
                     f"{best / r['ort_1']:.2f} | {r['argmax_vs_f32']:.3f} | {top} |")
        L.append("")
    if res["paper"]:
        L.append("### The paper's pipeline: EfficientNetV2-M (timm `efficientnetv2_rw_m`, random weights)")
        L.append("")
        L.append("| what | time (s) | GFLOP | GFLOP/s | start-up (s) | peak RSS (MiB) | vs amfp end to end (onnxruntime, int8, sequential, per part) |")
        L.append("|---|---:|---:|---:|---:|---:|---:|")
        ref = next((e for e in res["e2e"] if e["engine"] == "onnxruntime" and e["kind"] == "int8" and e["early_stop"] == "sequential"
                    and e["threads"] == 1), None)
        for r in res["paper"]:
            ratio = f"{r['median_s'] / (ref['median_total_ms'] / 1e3):.0f}x" if ref else ""
            L.append(f"| {r['label']} | {r['median_s']:.2f} | {r['flops'] / 1e9:.0f} | {r['flops'] / r['median_s'] / 1e9:.0f} | "
                     f"{r['load_s']:.2f} | {r['peak_rss_kb'] / 1024:.0f} | {ratio} |")
        L.append("")
    L.append("### amfp end to end, per part")
    L.append("")
    nparts = res["e2e"][0]["parts"] if res["e2e"] else 0
    L.append(f"`amfp identify --json --engine E --threads N --early-stop RULE --model M` on {nparts} simulated parts "
             f"(`amfp synth --fleet models/amfp-synth-v3.fleet.toml --parts-per-machine 1 --seed {SEED}`: one per machine, "
             "held-out units included). Per-part medians from each Attribution's `timing_ms` (capture = PNG decode); "
             "parts/s = parts / wall time of the whole command (model load included); peak RSS of the process.")
    L.append("")
    L.append("| engine | model | early stop | threads (parts at once) | total ms/part | decode | preprocess | inference | ROIs/part | parts/s | peak RSS (MiB) |")
    L.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for e in res["e2e"]:
        L.append(f"| {e['engine']} | {e['kind']} | {e['early_stop']} | {e['threads']} | {e['median_total_ms']:.0f} | {e['median_capture_ms']:.0f} | "
                 f"{e['median_preprocess_ms']:.0f} | {e['median_inference_ms']:.0f} | {e['mean_rois']:.1f} | {e['parts_per_s']:.2f} | "
                 f"{e['peak_rss_mib']:.0f} |")
    L.append("")
    daemons = res.get("daemon") or {}
    for engine, dm in daemons.items():
        L.append(f"The daemon on {engine}, `amfp run --engine {engine} --dir DIR --parts {dm['parts']}` (watched directory, "
                 f"shipped int8 model, defaults): peak RSS **{dm['peak_rss_mib']:.0f} MiB** over {dm['parts']} parts.")
    L.append("")
    L.append(bars(res))
    if res["layers"]:
        L.append("### Candidate layers for the next model (random weights, 16 inputs)")
        L.append("")
        L.append("Each row is a small ONNX graph exported from PyTorch (stacks of 4 identical layers with ReLU, "
                 "or a whole edge net with BN folded), random weights, run by both engines on 16 inputs. tract as amfp "
                 "runs it: f32 in one-input calls, int8 in calls of 4; 2 thr = the calls shared out between two threads. "
                 "int8 = QOperator per-tensor Conv+Relu (`amfp_train.quantize --format qoperator --per-tensor`), the form "
                 "tract runs on integer kernels.")
        L.append("")
        L.append("| layers | GFLOP | tract f32 1 thr GFLOP/s | tract/ORT f32 1 thr | tract/ORT f32 2 thr | tract int8/f32 1 thr | ORT int8/f32 1 thr | tract/ORT int8 2 thr |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in res["layers"]:
            L.append(f"| {r['layer']} | {r['flops_16'] / 1e9:.2f} | {r['flops_16'] / r['tract_f32_1'] / 1e9:.0f} | "
                     f"{r['tract_f32_1'] / r['ort_f32_1']:.1f} | {r['tract_f32_2'] / r['ort_f32_2']:.1f} | "
                     f"{r['tract_int8_1'] / r['tract_f32_1']:.2f} | {r['ort_int8_1'] / r['ort_f32_1']:.2f} | "
                     f"{r['tract_int8_2'] / r['ort_int8_2']:.1f} |")
        L.append("")
    return "\n".join(L) + "\n"


def bars(res) -> str:
    """The bars of the engine issue (issue 20), each with the numbers behind it."""
    L = ["### The bars of issue 20 (onnxruntime as the engine)", ""]
    py = {(r["kind"], r["threads"]): r for r in res["model_only"] if py_ort(r)}
    amfp_ort = {(r["kind"], r["threads"]): r for r in res["model_only"] if r.get("mode") == "amfp" and r["engine"] == "onnxruntime"}
    verdict = lambda ok: "met" if ok else "not met"  # noqa: E731
    for kind in ("f32", "int8"):
        for t in (1, 2):
            if (kind, t) in amfp_ort and (kind, t) in py:
                ratio = amfp_ort[(kind, t)]["median_s"] / py[(kind, t)]["median_s"]
                L.append(f"- amfp's model-only time on onnxruntime, {kind}, {t} thr, 16 ROIs: {amfp_ort[(kind, t)]['median_s'] * 1e3:.1f} ms "
                         f"vs Python onnxruntime {py[(kind, t)]['median_s'] * 1e3:.1f} ms = {ratio:.2f}x (at most 1.15x): "
                         f"**{verdict(ratio <= 1.15)}**.")
    for kind in ("int8", "f32"):
        e = next((e for e in res["e2e"] if e["engine"] == "onnxruntime" and e["kind"] == kind and e["early_stop"] == "sequential"
                  and e["threads"] == 1), None)
        if e and (kind, 1) in py:
            o = py[(kind, 1)]["median_s"] * 1e3
            ratio = e["median_total_ms"] / o
            L.append(f"- amfp end to end per part on onnxruntime, {kind}, early stopping, one part at a time, 1 thr: "
                     f"{e['median_total_ms']:.1f} ms vs onnxruntime model-only 16 ROIs, 1 thr, {o:.1f} ms = {ratio:.2f}x "
                     f"(at most 2x): **{verdict(ratio <= 2)}**.")
    if ("int8", 1) in amfp_ort and ("f32", 1) in amfp_ort:
        ratio = amfp_ort[("int8", 1)]["median_s"] / amfp_ort[("f32", 1)]["median_s"]
        L.append(f"- int8 / f32 model-only time on amfp's onnxruntime, 1 thr: {ratio:.2f}x (at most 0.7x): **{verdict(ratio <= 0.7)}** "
                 "(accuracy of both on onnxruntime: the model card).")
    for engine, dm in (res.get("daemon") or {}).items():
        mb = dm["peak_rss_mib"] * 1.048576
        bar = f" (under 150 MB): **{verdict(mb < 150)}**" if engine == "onnxruntime" else " (reported)"
        L.append(f"- peak RSS of `amfp run` on {engine}: {mb:.0f} MB{bar}.")
    for kind in ("f32", "int8"):
        starts = [f"{r['label']} {r['threads']} thr {r['load_s'] * 1e3:.0f} ms" for r in res["model_only"]
                  if r["kind"] == kind and (r.get("mode") == "amfp" and r["threads"] == 1 or py_ort(r) and r["threads"] == 1)]
        L.append(f"- start-up (load and optimise), {kind}: " + "; ".join(starts) + ".")
    L.append("")
    return "\n".join(L)


def write_section(path: Path, md: str) -> None:
    text = path.read_text()
    block = f"{BEGIN}\n{md}{END}\n"
    if BEGIN in text and END in text:
        pre, rest = text.split(BEGIN, 1)
        post = rest.split(END, 1)[1].lstrip("\n")
        text = pre + block + ("\n" + post if post else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    path.write_text(text)


def chart(res, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in res["model_only"]]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    for ax, kind in zip(axes, ("f32", "int8")):
        rs = [r for r in rows if r["kind"] == kind]
        labels = [f"{r['label']} ({r['threads']} thr)" for r in rs]
        vals = [r["median_s"] * 1e3 for r in rs]
        colors = ["#4c72b0" if py_ort(r) else "#55a868" if r["engine"] == "onnxruntime" else "#dd8452" for r in rs]
        ax.barh(labels, vals, color=colors)
        ax.invert_yaxis()
        ax.set_xlabel("ms per 16 ROIs (median)")
        ax.set_title(f"amfp-synth-v3 {kind}: tract (orange), amfp on onnxruntime (green), Python onnxruntime (blue)", fontsize=9)
        for y, v in enumerate(vals):
            ax.text(v, y, f" {v:.0f}", va="center", fontsize=8)
    m = res["machine"]
    fig.suptitle(f"{m['cpu']}, {m['cores']} cores; mode {m['mode']}; load avg at start {m['load_avg_at_start'][0]:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
