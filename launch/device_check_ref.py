"""The authors' PyTorch code through the device check's shapes (`launch/device_check.py` runs this).

    python launch/device_check_ref.py --ref_dir=DIR --bench_ref=DIR [--batch=32] [--budget_sec=100] [--smoke]
    python launch/device_check_ref.py --ref_dir=DIR --bench_ref=DIR --precision=fp32|bf16 [--steps=10
        --warmup=3 --threads=2] --train_shape='{"n_blocks": 4, "hidden_size": 256, "n_heads": 4,
        "cond_dim": 128, "length": 128, "vocab": 64, "batch": 32}'

DIR of --ref_dir is the authors' repository (kuleshov-group/proseco) as files, e.g.
`git -C MIRROR archive 69fe45d | tar -x -C DIR`; --bench_ref is the harness that composes the authors' config
and builds their `Diffusion` (bench_ref.py, with a plain-torch stand-in for flash_attn and import-only stubs
for CUDA-only packages). This script takes those building blocks and times, on CUDA when there is one:
- the train step, ProSeCo and MDLM-only (`Diffusion._loss`, backward, gradient clipping, AdamW, EMA, LR
  schedule: Lightning's automatic optimisation), under `torch.autocast(bfloat16)` as the authors' Lightning
  `precision: bf16` runs it, at the largest batch from --batch down (halving on out-of-memory);
- `Diffusion._diffusion_sample` for each (T, S) of the grid (float64 sampling math, nucleus 0.9, argmax
  corrector every step), after a 4-step warm-up run.
DiT-small at L = 1024 on the GPT-2 vocabulary (--smoke: a one-block model at L = 16). --train_shape
times only the two train steps, at that shape (`launch/benchmark.py --what=vs_reference` runs this at its
presets), in --precision: fp32, or bf16 under autocast. Each figure is one JSON line. It runs in the
reference's Python (torch, hydra, lightning), which need not have absl: hence argparse.
"""

import argparse
import contextlib
import gc
import importlib.util
import itertools
import json
import os
import statistics
import sys
import time

import torch

SEED = 1
OWT = dict(n_blocks=12, hidden_size=768, n_heads=12, cond_dim=128, length=1024, vocab=50257, sample_batch=16)
SMOKE = dict(n_blocks=1, hidden_size=32, n_heads=2, cond_dim=16, length=16, vocab=50257, sample_batch=2)
TRAIN_SHAPE_KEYS = ("n_blocks", "hidden_size", "n_heads", "cond_dim", "length", "vocab", "batch")
GRID = ((128, 0), (128, 2), (1024, 0), (1024, 2))  # (T, S) as launch/device_check.py's SAMPLE_GRID.
SMOKE_GRID = ((4, 0), (4, 2))
WARMUP_SAMPLE_STEPS = 4  # Enough for a warm-up run to take every path of the sampler once.


def emit(part: str, **figures) -> None:
    print(json.dumps({"part": part, **figures}), flush=True)


def load_harness(bench_ref: str, ref_dir: str, shape: dict):
    """bench_ref.py as a module, reading the reference from ref_dir, with a `check` size of `shape`."""
    os.environ["REF_DIR"] = ref_dir  # bench_ref puts it on sys.path when imported.
    spec = importlib.util.spec_from_file_location("bench_ref", os.path.join(bench_ref, "bench_ref.py"))
    harness = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(harness)
    harness.VOCAB = shape["vocab"]
    harness.SIZES["check"] = {key: shape[key] for key in ("n_blocks", "hidden_size", "n_heads", "cond_dim",
                                                          "length")}
    harness._register_resolvers()
    return harness


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def train_times(harness, corrector: bool, batch: int, device: torch.device, steps: int,
                warmup: int, bf16: bool = True) -> tuple[float, float]:
    """(first step's seconds, median seconds of `steps` steps after `warmup` more) of one program, its loss
    under bf16 autocast (the authors' `precision: bf16`) or in fp32."""
    harness.SIZES["check"]["batch"] = batch
    config = harness.compose(harness.train_overrides("check", corrector))
    model = harness.build(config, SEED).to(device)
    if not corrector:
        harness._patch_mdlm_double_subs(model)  # The reference's MDLM loss edits a log_softmax in place.
    model.train()
    if model.ema is not None:
        model.ema.move_shadow_params_to_device(device)  # What its on_train_start does.
    [optimizer], [scheduler] = model.configure_optimizers()
    scheduler = scheduler["scheduler"]
    params = list(itertools.chain(model.backbone.parameters(), model.noise.parameters()))
    length = config.model.length
    x0 = torch.randint(0, harness.VOCAB, (batch, length), device=device,
                       generator=torch.Generator(device).manual_seed(SEED))
    attention_mask = torch.ones(batch, length, device=device)
    times = []
    for _ in range(1 + warmup + steps):
        sync(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = model._loss(x0, attention_mask).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, float(config.trainer.gradient_clip_val))
        optimizer.step()
        if model.ema is not None:
            model.ema.update(params)
        scheduler.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1 + warmup:])


def train_part(harness, device: torch.device, batch: int, steps: int, warmup: int, deadline: float,
               bf16: bool = True) -> None:
    for program, corrector in (("proseco", True), ("mdlm", False)):
        size = batch
        while size >= 1:
            if time.perf_counter() > deadline:
                emit("reference_train", program=program, skipped=f"no time left for batch {size}")
                break
            try:
                first, median = train_times(harness, corrector, size, device, steps, warmup, bf16)
            except torch.cuda.OutOfMemoryError as e:  # Also the name of it in torch < 2.5.
                emit("reference_train", program=program, batch=size, oom=str(e).splitlines()[0][:300])
                free(device)
                size //= 2
                continue
            length = harness.SIZES["check"]["length"]
            emit("reference_train", program=program, batch=size, length=length, step_sec=median,
                 tokens_per_sec=size * length / median, first_step_sec=first, device=str(device),
                 precision="bf16" if bf16 else "fp32")
            free(device)
            break


def sample_part(harness, device: torch.device, shape: dict, grid, deadline: float) -> None:
    harness.SIZES["check"]["batch"] = shape["sample_batch"]
    sec_per_nfe = None
    for steps, corrector_steps in grid:
        left = deadline - time.perf_counter()
        estimate = None if sec_per_nfe is None else steps * (1 + corrector_steps) * sec_per_nfe
        if left <= 0 or (estimate is not None and estimate > left):
            emit("reference_sample", steps=steps, corrector_steps=corrector_steps,
                 skipped=f"estimated {estimate or 0:.0f} s, {max(left, 0):.0f} s left")
            continue
        harness.SIZES["check"]["sample_steps"] = steps
        config = harness.compose(harness.sample_overrides("check", corrector_steps, "True", 0.9))
        model = harness.build(config, SEED).to(device)
        harness._perturb_zero_init(model, SEED + 3)  # A zero output layer would make every call alike.
        model.eval()
        runs = []
        for run_steps in (WARMUP_SAMPLE_STEPS, steps):
            config.sampling.steps = run_steps
            torch.manual_seed(SEED + 4)
            sync(device)
            start = time.perf_counter()
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                _, nfe = model._diffusion_sample(eps=1e-5, disable_pbar=True)
            sync(device)
            runs.append(time.perf_counter() - start)
        total = int(nfe["total_NFEs"])
        sec_per_nfe = max(sec_per_nfe or 0.0, runs[1] / max(total, 1))
        emit("reference_sample", steps=steps, corrector_steps=corrector_steps, batch=shape["sample_batch"],
             length=shape["length"], run_sec=runs[1], samples_per_sec=shape["sample_batch"] / runs[1],
             ms_per_nfe=1e3 * runs[1] / max(total, 1), nfe={k: int(v) for k, v in nfe.items()},
             warmup_run_sec=runs[0], device=str(device))
        del model
        free(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--ref_dir", required=True)
    parser.add_argument("--bench_ref", required=True)
    parser.add_argument("--batch", type=int, default=32, help="first train batch to try (halved on OOM)")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--budget_sec", type=float, default=100)
    parser.add_argument("--smoke", action="store_true", help="a one-block model at L = 16")
    parser.add_argument("--train_shape", type=json.loads, help="only the train steps, at this shape: a JSON "
                        f"object of {', '.join(TRAIN_SHAPE_KEYS)}")
    parser.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    parser.add_argument("--threads", type=int, default=0, help="torch's intra-op threads (0: its default)")
    args = parser.parse_args()
    for name in ("ref_dir", "bench_ref"):
        if not os.path.isdir(getattr(args, name)):
            print(f"error: --{name}={getattr(args, name)!r} is not a directory", file=sys.stderr)
            return 2
    if args.train_shape is not None and set(args.train_shape) != set(TRAIN_SHAPE_KEYS):
        print(f"error: --train_shape needs exactly the keys {', '.join(TRAIN_SHAPE_KEYS)}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    shape = args.train_shape or (SMOKE if args.smoke else OWT)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    harness = load_harness(args.bench_ref, os.path.abspath(args.ref_dir), shape)
    emit("reference", device=str(device), torch=torch.__version__,
         device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu")
    steps, warmup = (1, 0) if args.smoke else (args.steps, args.warmup)
    bf16 = args.precision == "bf16"
    if args.train_shape:
        train_part(harness, device, shape["batch"], steps, warmup, start + args.budget_sec, bf16)
        return 0
    train_part(harness, device, args.batch, steps, warmup, deadline=start + 0.5 * args.budget_sec, bf16=bf16)
    sample_part(harness, device, shape, SMOKE_GRID if args.smoke else GRID,
                deadline=start + args.budget_sec)
    return 0


if __name__ == "__main__":
    sys.exit(main())
