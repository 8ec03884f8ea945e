"""ONNX Runtime int8: speed on ResNet-50 and accuracy on the fixture CIFAR-10 ResNet-56, with the targets.

    python benchmarks/onnx_runtime.py [--limit N] [--rounds 7] [--speed-model resnet50]

Speed: timm resnet50 (random weights: the kernels do not depend on the values), PyTorch float, ONNX Runtime float
(PyTorch's export of the same model), ONNX Runtime int8 from ``udfc_hub.export_onnx`` (W8A8, udfc+, ranges
without data) and ONNX Runtime's own static int8 quantizer (QDQ, per-channel int8 weights, uint8 activations,
MinMax calibration on random inputs, as its docs show), at batch 1 and 32, on this machine's cores. Each
configuration runs once per round, the rounds interleaved, and the median is reported.

Accuracy: the fixture ResNet-56 on the CIFAR-10 test images (10,000; ``--limit`` for fewer): top-1 of PyTorch
float, PyTorch W8A8 (the artifact's fake-quantized forward), ONNX Runtime float, ours and ONNX Runtime's
quantizer, and the top-1 agreement of ours with the PyTorch W8A8 model. File sizes of every ONNX file.
Writes benchmarks/results/onnx_runtime.{json,md}. Needs the [onnx] extra and the shared fixtures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import timm
import torch

import udfc_hub
from udfc_hub.evaluation import load_eval_data

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("UDFC_FIXTURES", REPO.parent / "shared" / "fixtures"))
CHECKPOINTS = {"cifar_resnet56": "resnet56-4bfd9763.th", "cifar_resnet20": "resnet20-12fca82f.th"}
DATA = FIXTURES / "cifar10" / "cifar10_test_jpeg_q75.npz"
TARGET_SPEEDUP = 2.5
TARGET_AGREEMENT = 99.5


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_float(model: torch.nn.Module, path: Path, size) -> Path:
    torch.onnx.export(
        model.eval(),
        (torch.randn(1, *size),),
        str(path),
        dynamo=False,
        opset_version=17,
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path


def ort_quantized(float_path: Path, path: Path, size, n_calib: int = 8) -> Path:
    """ONNX Runtime's static quantizer as its documentation uses it, fed random calibration batches."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Random(CalibrationDataReader):
        def __init__(self):
            g = np.random.default_rng(0)
            self.batches = iter([{"pixel_values": g.standard_normal((1, *size)).astype(np.float32)}] * n_calib)

        def get_next(self):
            return next(self.batches, None)

    pre = path.with_suffix(".pre.onnx")
    quant_pre_process(str(float_path), str(pre))
    quantize_static(
        str(pre),
        str(path),
        Random(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    return path


def run_torch(model, x):
    with torch.no_grad():
        return model(x)


def speed(args, work: Path) -> dict:
    torch.set_num_threads(args.threads)
    model = timm.create_model(args.speed_model).eval()
    size = model.pretrained_cfg["input_size"]
    size = (size[0], args.speed_size, args.speed_size) if args.speed_size else size
    t = time.perf_counter()
    result = udfc_hub.compress(model, prune_ratio=0.0, bits=8, act_bits=8, input_size=size)
    compress_s = time.perf_counter() - t
    paths = {"onnxruntime float": export_float(model, work / "float.onnx", size)}
    t = time.perf_counter()
    exported = udfc_hub.export_onnx(result, work / "udfc.onnx", input_size=size)
    export_s = time.perf_counter() - t
    paths["onnxruntime int8 (udfc-hub)"] = exported.path
    exact = udfc_hub.export_onnx(result, work / "udfc_exact.onnx", input_size=size, int8_outputs=False)
    paths["onnxruntime int8 (udfc-hub, int8_outputs=False)"] = exact.path
    paths["onnxruntime int8 (its own quantizer)"] = ort_quantized(paths["onnxruntime float"], work / "ort.onnx", size)
    sessions = {k: session(p, args.threads) for k, p in paths.items()}
    out = {"model": args.speed_model, "size": list(size), "compress_s": compress_s, "export_s": export_s}
    out["batches"] = {}
    out["sizes_mb"] = {k: p.stat().st_size / 1e6 for k, p in paths.items()}
    for batch in (1, 32):
        x = torch.randn(batch, *size)
        feeds = {"pixel_values": x.numpy()}
        runs = {"pytorch float": lambda x=x: run_torch(model, x)}
        runs.update({k: (lambda s=s, feeds=feeds: s.run(None, feeds)) for k, s in sessions.items()})
        for fn in runs.values():  # warm-up
            fn()
        times = {k: [] for k in runs}
        rounds = args.rounds if batch == 32 else args.rounds * 5
        for _ in range(rounds):
            for k, fn in runs.items():
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        out["batches"][str(batch)] = {
            "median_s": med,
            "rounds": rounds,
            "speedup_vs_ort_float": {k: med["onnxruntime float"] / v for k, v in med.items()},
        }
        print(f"batch {batch}: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in med.items()), flush=True)
    return out


def cifar_images(limit: int | None):
    data = load_eval_data(DATA)
    data = data.subset(limit) if limit else data
    x = torch.from_numpy(data.array).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std, np.asarray(data.labels)


def predict_torch(model, x, batch=500) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)]).numpy()


def predict_ort(sess, x, batch=500) -> np.ndarray:
    out = [sess.run(None, {"pixel_values": x[i : i + batch].numpy()})[0].argmax(1) for i in range(0, len(x), batch)]
    return np.concatenate(out)


def accuracy(args, work: Path) -> dict:
    torch.set_num_threads(args.threads)
    ckpt = FIXTURES / "weights" / "akamaster_resnet_cifar10" / CHECKPOINTS[args.cifar_model]
    model = timm.create_model(args.cifar_model, checkpoint_path=str(ckpt)).eval()
    size = model.pretrained_cfg["input_size"]
    x, labels = cifar_images(args.limit)
    result = udfc_hub.compress(model, prune_ratio=0.0, bits=8, act_bits=8)
    flow = next((n.removeprefix("int8 data flow: ") for n in result.report.notes if n.startswith("int8 data")), "")
    with tempfile.TemporaryDirectory() as d:
        udfc_hub.save_pretrained(result, Path(d) / "w8a8")
        exported = udfc_hub.export_onnx(Path(d) / "w8a8", work / "c56_udfc.onnx")
        exact = udfc_hub.export_onnx(Path(d) / "w8a8", work / "c56_exact.onnx", int8_outputs=False)
    float_path = export_float(model, work / "c56_float.onnx", size)
    ort_path = ort_quantized(float_path, work / "c56_ort.onnx", size)
    preds = {
        "pytorch float": predict_torch(model, x),
        "pytorch W8A8 (udfc-hub artifact)": predict_torch(result.model, x),
        "onnxruntime float": predict_ort(session(float_path, args.threads), x),
        "onnxruntime int8 (udfc-hub)": predict_ort(session(exported.path, args.threads), x),
        "onnxruntime int8 (udfc-hub, int8_outputs=False)": predict_ort(session(exact.path, args.threads), x),
        "onnxruntime int8 (its own quantizer)": predict_ort(session(ort_path, args.threads), x),
    }
    top1 = {k: float((p == labels).mean() * 100) for k, p in preds.items()}
    ref = preds["pytorch W8A8 (udfc-hub artifact)"]
    agreement = float((preds["onnxruntime int8 (udfc-hub)"] == ref).mean() * 100)
    agreement_exact = float((preds["onnxruntime int8 (udfc-hub, int8_outputs=False)"] == ref).mean() * 100)
    sizes = {"float": float_path, "int8 (udfc-hub)": exported.path, "int8 (its own quantizer)": ort_path}
    for k, v in top1.items():
        print(f"{k}: top-1 {v:.2f}", flush=True)
    print(f"agreement with the PyTorch W8A8 model: {agreement:.2f} % ({agreement_exact:.2f} % exact)", flush=True)
    return {
        "model": args.cifar_model,
        "images": len(labels),
        "flow": flow,
        "top1": top1,
        "agreement_with_pytorch_w8a8": agreement,
        "agreement_with_pytorch_w8a8_exact": agreement_exact,
        "sizes_mb": {k: p.stat().st_size / 1e6 for k, p in sizes.items()},
        "export": {
            "int8_weights": exported.int8_weights,
            "quantized_inputs": exported.quantized_inputs,
            "folded_norms": exported.folded_norms,
            "output_quantizers": exported.output_quantizers,
            "routed_adds": exported.routed_adds,
        },
    }


def write(results: dict, args, argv) -> None:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "onnx_runtime.json").write_text(json.dumps(results, indent=2) + "\n")
    sp, acc = results["speed"], results["accuracy"]
    cmd = "python benchmarks/onnx_runtime.py" + (" " + " ".join(argv) if argv else "")
    lines = [
        "# ONNX Runtime int8: speed and accuracy",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {results['machine']}, {args.threads} threads, onnxruntime {results['onnxruntime']}, "
        f"torch {torch.__version__}.",
        "",
        f"## Speed: {sp['model']} (random weights, {sp['size'][1]}x{sp['size'][2]}), median of interleaved rounds",
        "",
        "| configuration | batch 1 (ms) | batch 32 (ms) | x vs ORT float, batch 32 | file (MB) |",
        "|---|---|---|---|---|",
    ]
    b1, b32 = sp["batches"]["1"], sp["batches"]["32"]
    for k in b32["median_s"]:
        size = f"{sp['sizes_mb'][k]:.1f}" if k in sp["sizes_mb"] else "-"
        lines.append(
            f"| {k} | {b1['median_s'][k] * 1e3:.1f} | {b32['median_s'][k] * 1e3:.0f} | "
            f"{b32['speedup_vs_ort_float'][k]:.2f} | {size} |"
        )
    ours = b32["speedup_vs_ort_float"]["onnxruntime int8 (udfc-hub)"]
    lines += [
        "",
        f"Compression (W8A8, udfc+) took {sp['compress_s']:.1f} s, the export {sp['export_s']:.1f} s.",
        "",
        f"## Accuracy: fixture {acc['model']}, CIFAR-10 test ({acc['images']} images), W8A8 udfc+ without data",
        "",
        "| model | top-1 % |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in acc["top1"].items()]
    ag, ag_exact = acc["agreement_with_pytorch_w8a8"], acc["agreement_with_pytorch_w8a8_exact"]
    exact_speed = b32["speedup_vs_ort_float"]["onnxruntime int8 (udfc-hub, int8_outputs=False)"]
    ex = acc["export"]
    lines += [
        "",
        f"Exported graph: {ex['int8_weights']} int8 weight tensors, {ex['quantized_inputs']} quantized layer inputs, "
        f"{ex['folded_norms']} BatchNorms folded, int32 biases. The model carries its own int8 data flow "
        f"({acc['flow']}), so the export adds {ex['output_quantizers']} output quantizers and routes "
        f"{ex['routed_adds']} residual additions: ONNX Runtime rounds where PyTorch does, up to float round-off. "
        "`int8_outputs=False` keeps the BatchNorms and float biases (float kernels). "
        "Files (MB): " + ", ".join(f"{k} {v:.2f}" for k, v in acc["sizes_mb"].items()) + ".",
        "",
        "## Targets",
        "",
        f"- ONNX Runtime int8 (udfc-hub) at batch 32 >= {TARGET_SPEEDUP}x ONNX Runtime float: **{ours:.2f}x** "
        f"({'met' if ours >= TARGET_SPEEDUP else 'missed'}); ONNX Runtime's own quantizer: "
        f"{b32['speedup_vs_ort_float']['onnxruntime int8 (its own quantizer)']:.2f}x.",
        f"- top-1 agreement with the PyTorch W8A8 model >= {TARGET_AGREEMENT} %: **{ag:.2f} %** "
        f"({'met' if ag >= TARGET_AGREEMENT else 'missed'}) with the default int8 data flow; "
        f"{ag_exact:.2f} % ({'met' if ag_exact >= TARGET_AGREEMENT else 'missed'}) with `int8_outputs=False`, "
        f"which runs at {exact_speed:.2f}x.",
        "- accuracy beside ONNX Runtime's quantizer (random calibration): udfc-hub "
        f"{acc['top1']['onnxruntime int8 (udfc-hub)']:.2f} vs "
        f"{acc['top1']['onnxruntime int8 (its own quantizer)']:.2f}.",
        "",
    ]
    (out / "onnx_runtime.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, help="evaluate N evenly spaced fixture images only (smoke runs)")
    ap.add_argument("--rounds", type=int, default=7, help="timing rounds at batch 32 (5x as many at batch 1)")
    ap.add_argument("--speed-model", default="resnet50")
    ap.add_argument("--speed-size", type=int, help="image side for the speed runs (default: the model's)")
    ap.add_argument("--cifar-model", default="cifar_resnet56", choices=list(CHECKPOINTS))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args(argv)
    try:
        import onnxruntime
    except ImportError:
        sys.exit("onnxruntime is not installed: pip install 'udfc-hub[onnx]'")
    ckpt = FIXTURES / "weights" / "akamaster_resnet_cifar10" / CHECKPOINTS[args.cifar_model]
    if not DATA.exists() or not ckpt.exists():
        sys.exit(f"fixture missing: {DATA} or {ckpt} (set UDFC_FIXTURES)")
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        results = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "onnxruntime": onnxruntime.__version__,
            "accuracy": accuracy(args, work),
            "speed": speed(args, work),
        }
    write(results, args, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
