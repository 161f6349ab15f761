"""Regenerates README.md's "## Speed" section from benchmarks/results/*.json (the full suite's).

    python benchmarks/readme.py            # rewrites only that section of README.md

Every number in the section comes from the result files; nothing is typed in by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, markdown_table, write_atomic  # noqa: E402

README = HERE.parent / "README.md"
HEADING = "## Speed"


def _load(name: str):
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _iqr(s: dict) -> str:
    return f"{s['median']:.3g} ({s['q1']:.3g}-{s['q3']:.3g})"


def machine_line(suite: dict) -> str:
    m = suite.get("machine_before", {})
    info = m.get("fomo_core", {})
    load = m.get("load_average", [float("nan")])[0]
    after = suite.get("machine_after", {}).get("load_average", [float("nan")])[0]
    return (
        f"{m.get('cpu', '?')}, {m.get('cpus', '?')} cores shared with other work (load average {load:.1f} before, "
        f"{after:.1f} after), torch {m.get('torch', '?')}, fomo_core {info.get('version', '?')} "
        f"({info.get('simd', '?')} kernels, {info.get('threads', '?')} threads)"
    )


def round_section(r: dict) -> list:
    ours_name, preset_name, peer_name = "fomo-core", "fomo-core, pfllib preset", "PFLlib-style"
    rows = []
    for row in r["rows"]:
        t = row["timing"]
        ours, preset, peer = t[ours_name], t[preset_name], t[peer_name]
        lo, hi = ours["speedup_range"]
        cpu = lambda x: f"{x['cpu_speedup_vs_pfllib']:.2f}x" if "cpu_speedup_vs_pfllib" in x else ""  # noqa: E731
        rows.append(
            [
                row["subject"],
                row["M"],
                _iqr(ours["total"]),
                _iqr(peer["total"]),
                f"{ours['speedup_vs_pfllib']:.2f}x ({lo:.2f}-{hi:.2f})",
                f"**{cpu(ours)}**",
                f"{preset['speedup_vs_pfllib']:.2f}x / {cpu(preset)}",
                " / ".join(f"{ours[p]['median']:.3g}" for p in ("eval", "weights+update", "train", "copies")),
                " / ".join(f"{peer[p]['median']:.3g}" for p in ("eval", "weights+update", "train", "copies")),
            ]
        )
    big = [row for row in r["rows"] if row.get("step_bandwidth") and row["step_bandwidth"]["P"] >= 1_000_000]
    text = [
        "### The whole client round",
        "",
        "`benchmarks/bench_round.py`: one FedFomo client round (evaluate the baseline and M candidates, "
        "weigh, update, one local epoch) of fomo-core's `FedFomoClient.round` against a PFLlib-style "
        "round re-stated from PFLlib's `clientfomo.py` (`benchmarks/pfllib_round.py`: modules made from the "
        "received state_dicts, train-mode evaluation with autograd on, per-layer aggregation). Same model, "
        f"candidates (as state_dicts), data and training loader (PFLlib's defaults: batch {r['batch_size']}, "
        f"lr {r['lr']}). Each case first checks that fomo-core's round (its own policy with PFLlib's eps) and "
        "fomo-core running the `pfllib` preset give the PFLlib-style round's losses, weights, and parameters "
        "after the update and after the epoch (fomo-core's own round on ResNet-18 given the same losses: it "
        "evaluates in eval mode, PFLlib in train mode). Milliseconds, median (quartiles) of interleaved "
        f"rounds, {r['torch_threads']} torch thread(s); the speedup also by the process's CPU time, which time "
        "given to other processes on this shared machine does not inflate; phases (wall ms): eval / "
        "weights+update / train / copies:",
        "",
        markdown_table(
            [
                "model",
                "M",
                "fomo-core ms",
                "PFLlib-style ms",
                "speedup, wall (range)",
                "speedup, CPU time",
                "`pfllib` preset: wall / CPU",
                "fomo-core phases",
                "PFLlib-style phases",
            ],
            rows,
        ),
        "",
        "Training (the same torch SGD loop over the same loader in every client) is most of a fomo-core "
        "round: it bounds the round's speedup however fast the FedFomo part gets.",
        "",
    ]
    if big:
        fr = [row["step_bandwidth"]["fraction_of_probe"] for row in big]
        text += [
            f"Inside the ResNet-18 round, fomo-core's weights + update move their bytes at {min(fr):.2f}-{max(fr):.2f} "
            "of a dot-product bandwidth probe timed in the same rounds (the smaller models fit in the caches, "
            "where that probe is no roof)"
            + (
                "; above 1, the probe itself lost its rounds to other processes: on "
                "this shared machine a single probe per round is no reliable roof (the kernels' own benchmark below "
                "times it with every method)"
                if max(fr) > 1
                else ""
            )
            + ".",
            "",
        ]
    subjects = dict.fromkeys(row["subject"] for row in r["rows"])
    text += [" ".join(f"![{s}](benchmarks/results/round-{s.lower().replace(' ', '-')}.png)" for s in subjects), ""]
    return text


def evaluate_section(e: dict) -> list:
    keep = {
        "fused f32",
        "torch loop",
        "sklearn loop",
        "adapter loop",
        "adapter vmap",
        "adapter auto",
        "adapter loop bf16",
        "adapter vmap bf16",
    }
    rows = [
        [
            x["threads"],
            x["model"],
            x["B"],
            x["M"],
            x["method"],
            f"{x['median_ms']:.3g} ({x['q1_ms']:.3g}-{x['q3_ms']:.3g})",
            f"{x['speedup_vs_torch_loop']:.2f}x",
        ]
        for x in e["results"]
        if x["method"] in keep
    ]
    ablations = [
        [x["threads"], x["B"], x["method"].removeprefix("ablation: "), f"{x['speedup_vs_torch_loop']:.2f}x"]
        for x in e["results"]
        if x["method"].startswith("ablation") and "LeNet" in x["model"]
    ]
    text = [
        "### Candidate evaluation",
        "",
        "`benchmarks/bench_evaluate.py`: the loss of M candidates on a validation batch of B samples. The "
        "fused dense kernel covers MLPs; for other models the PyTorch adapter runs the candidates through "
        "`functional_call` (no copies), `max_pool2d` over non-overlapping windows as strided maxima (the "
        "same values bit for bit; torch's NCHW kernel was half of a LeNet forward), and either one call per "
        "candidate (`loop`, losses bit for bit those of the per-candidate loop) or `vmap` over the candidates "
        "in channels_last (float32 rounding); `auto` times both once per model and shape. bfloat16 autocast "
        "is opt-in (losses within 2e-2 relative). Baseline: the per-candidate `load_state_dict` loop, same run.",
        "",
        markdown_table(["threads", "model", "B", "M", "method", "ms median (IQR)", "vs torch loop"], rows),
        "",
    ]
    if ablations:
        text += [
            "What decided the torch routes (LeNet CNN, each a per-candidate loop with one change, or plain vmap):",
            "",
            markdown_table(["threads", "B", "change", "vs torch loop"], ablations),
            "",
        ]
    return text


def early_stop_section(s: dict) -> list:
    rows = [
        [
            x["model"],
            x["epochs"],
            x["setting"],
            f"{x['speedup_vs_full']:.2f}x",
            f"{100 * x['stopped_fraction']:.0f}%",
            f"{x['rounds_with_changed_helpers']} of {x['rounds']}",
            x["improving_candidates_stopped"],
            f"{x['max_weight_change']:.3g}",
        ]
        for x in s["rows"]
    ]
    return [
        "### Early stopping of candidate evaluation (opt-in)",
        "",
        "`evaluate_module(..., early_stop=EarlyStop(baseline_loss))` evaluates in batches (in a seeded random "
        "order) and stops a candidate once its loss is confidently above the baseline's (z standard errors of "
        "the batch means, finite-population corrected): such a candidate gets weight 0 anyway. The risk is "
        "stopping one that would have improved. `benchmarks/bench_early_stop.py` on the demo's digits in "
        f"latent groups ({s['clients']} clients, each evaluating the other {s['M']}; time summed over all "
        "clients, against full evaluation in the same run):",
        "",
        markdown_table(
            [
                "model",
                "local epochs",
                "setting",
                "speed vs full",
                "stopped",
                "rounds whose helped set changed",
                "improving candidates stopped",
                "max weight change",
            ],
            rows,
        ),
        "",
    ]


def kernels_section(k: dict) -> list:
    if not k or "headline" not in k:
        return []
    rows = [
        [
            x["method"],
            f"{x['ms']:.3g}",
            f"{x['gbs']:.1f}",
            f"{x['fraction_of_probe']:.2f}",
            f"{x['speedup_vs_pfllib']:.1f}x",
        ]
        for x in k["headline"]
    ]
    c = k.get("config", {})
    return (
        [
            "### Weights + update",
            "",
            f"`benchmarks/bench_kernels.py`: P = {c.get('P', 0):,} (ResNet-18's parameters as {c.get('layers', '?')} "
            f"layers), float32, M = {c.get('M', '?')}, all improving; effective bandwidth counts the bytes the op must "
            f"move, against a dot-product probe timed in the same rounds ({k['probe']['gbs']:.1f} GB/s). "
            f"Full tables: `benchmarks/results/kernels.md`.",
            "",
            markdown_table(["method", "ms", "GB/s", "of probe", "vs PFLlib-style loop"], rows),
            "",
            f"Load average {k.get('load_average', {}).get('before', float('nan')):.1f} during that run: compare its "
            "same-run ratios, not its milliseconds.",
            "",
        ]
        + _kernel_extras(k)
        + ["![weights + update bandwidth](benchmarks/results/kernels.png)", ""]
    )


def _captioned(caption: str, headers: list, rows: list) -> list:
    """A caption, then its table, as README lines."""
    return [caption, "", markdown_table(headers, rows), ""]


def _kernel_extras(k: dict) -> list:
    """Storage dtypes, skipped candidates and layer lists (with and without a plan), when present."""
    out = []
    wall = {r["dtype"]: r["speedup_vs_float32"] for r in k.get("dtypes", [])}
    cpu = {r["dtype"]: r["speedup_vs_float32"] for r in k.get("dtypes_one_thread", [])}
    if wall:
        out += _captioned(
            "Storage dtypes against float32 (the same call; wall time on the run's threads, and CPU time on one "
            "kernel thread, which other processes do not disturb):",
            ["dtype", "speed vs float32 (wall)", "speed vs float32 (one thread, CPU time)"],
            [[d, f"{v:.2f}x", f"{cpu[d]:.2f}x" if d in cpu else ""] for d, v in wall.items()],
        )
    if k.get("skip"):
        out += _captioned(
            "Non-improving candidates (M = 10):",
            ["case", "time vs all improving", "bytes vs all improving"],
            [[r["case"], f"{r['relative_time']:.2f}", f"{r['relative_bytes']:.2f}"] for r in k["skip"]],
        )
    if k.get("layer_lists"):
        out += _captioned(
            "Layer lists against the same data flat (`fomo_core.plan` reads a layout once):",
            ["model", "method", "time vs flat out="],
            [[r["model"], r["method"], f"{r['vs_flat']:.2f}x"] for r in k["layer_lists"]],
        )
    return out


def server_section(s: dict) -> list:
    rows = [r for r in s["rows"] if "skipped" not in r]
    if not rows:
        return []
    table = [
        [
            f"{r['N']:,}",
            f"{r['P']:,} {r['dtype']}",
            r["participation"],
            f"{r['peak_rss_mib']:.0f}",
            f"{r['select_us']:.3g} / {r['select_many_us']:.3g}",
            f"{r['round_cpu_s']:.3g} / {r['round_wall_s']:.3g} ({r['participants']:,})",
            f"{r['save_s']:.3g} / {r['checkpoint_mib']:.3g}",
            f"{r['load_s']:.3g} / {r['load_peak_rss_mib']:.0f}",
        ]
        for r in rows
    ]
    skipped = [f"N = {r['N']:,}, P = {r['P']:,} ({r['skipped']})" for r in s["rows"] if "skipped" in r]
    return [
        "### The server at scale",
        "",
        "`benchmarks/bench_server.py`: `fc.Server` with the models in a disk store "
        "(`open_model_store`), M = 5, affinity rows of k = 16 entries, every affinity row first given "
        f"{s['history']} updates of M clients; each configuration in its own process. Peak RSS is the "
        "process's high-water mark (imports included, about 30 MiB); CPU times are medians; select is per "
        "client, one call each / all of a round's clients in one `select_many`; the round is every "
        "participant's `candidates` (M rows read from the store), `receive` (a model written to it) and "
        "`end_round`; a checkpoint of a store holds only which row is whose, and loading it checks every "
        "row's CRC-32:",
        "",
        markdown_table(
            [
                "N",
                "P",
                "participation",
                "peak RSS MiB",
                "select µs: one / many",
                "round s: CPU / wall (clients)",
                "save s / checkpoint MiB",
                "load s / peak RSS MiB",
            ],
            table,
        ),
        "",
        *([f"Not run (disk): {'; '.join(skipped)}.", ""] if skipped else []),
        f"Load average {s.get('machine', {}).get('load_average', [float('nan')])[0]:.1f} when that run ended "
        "(the machine is shared): the store's reads and writes wait on the disk, hence wall times well "
        "above the CPU times at ResNet-18 size.",
        "",
        "![server growth](benchmarks/results/server.png)",
        "",
    ]


def section() -> str:
    suite = _load("suite") or {}
    parts = [
        HEADING,
        "",
        "Every figure below comes from `python -m benchmarks` run in the repository "
        "(or `fomo-core bench`; `--quick` for a short run), written to `benchmarks/results/` with the "
        "machine's description, and this section is regenerated from those files by "
        "`python benchmarks/readme.py`. Ratios are against baselines timed in the same run; medians with quartiles.",
        "",
    ]
    if suite:
        parts += [f"Measured on: {machine_line(suite)}.", ""]
    for name, make in (
        ("round", round_section),
        ("evaluate", evaluate_section),
        ("early-stop", early_stop_section),
        ("kernels", kernels_section),
        ("server", server_section),
    ):
        payload = _load(name)
        if payload:
            parts += make(payload)
    return "\n".join(parts).rstrip() + "\n\n"


def main() -> int:
    text = README.read_text()
    start = text.index(HEADING + "\n")
    end = text.find("\n## ", start + len(HEADING))
    end = len(text) if end < 0 else end + 1
    write_atomic(README, text[:start] + section() + text[end:])
    print(f"rewrote the {HEADING!r} section of {README}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
