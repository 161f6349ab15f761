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


def machine_line(suite: dict) -> str:
    m = suite.get("machine_before", {})
    info = m.get("fomo_core", {})
    load = m.get("load_average", [float("nan")])[0]
    after = suite.get("machine_after", {}).get("load_average", [float("nan")])[0]
    simd = ", ".join(flag.upper() for flag in m.get("simd", [])) or "?"
    bf16 = "bfloat16 instructions" if m.get("bf16_instructions") else "no bfloat16 instructions"
    return (
        f"{m.get('cpu', '?')} ({simd}; {bf16}; torch dispatches {m.get('torch_cpu_capability', '?')}), "
        f"{m.get('cpus', '?')} cores shared with other work (load average {load:.1f} before, {after:.1f} after), "
        f"torch {m.get('torch', '?')}, fomo_core {info.get('version', '?')} ({info.get('simd', '?')} kernels)"
    )


ROUND_CLIENTS = ("fomo-core", "fomo-core, pfllib preset", "PFLlib")
PHASES = ("eval", "weights+update", "train", "copies")


def _phases(t: dict) -> str:
    """eval / weights+update / train / copies = round, CPU ms medians."""
    return " / ".join(f"{t[p]['median']:.3g}" for p in PHASES) + f" = {t['cpu']['median']:.4g}"


def _per_forward(r: dict, subject: str) -> str:
    """CPU ms per forward of the validation set, fomo-core's own round (M + 3 forwards: the training
    check's two with the baseline and the M candidates) against PFLlib's (M + 1), per M."""
    ours_name, _, peer_name = ROUND_CLIENTS
    parts = []
    for row in r["rows"]:
        if row["subject"] == subject:
            t, m = row["timing"], row["M"]
            ours, peer = t[ours_name]["eval"]["median"] / (m + 3), t[peer_name]["eval"]["median"] / (m + 1)
            parts.append(f"{ours:.0f} ms per forward at M = {m} against PFLlib's {peer:.0f} ms")
    return "; ".join(parts) or "not measured"


def round_section(r: dict) -> list:
    ours_name, preset_name, peer_name = ROUND_CLIENTS
    rows = []
    for row in r["rows"]:
        t = row["timing"]
        ours, preset, peer = t[ours_name], t[preset_name], t[peer_name]
        rows.append(
            [
                row["subject"],
                row["M"],
                _phases(peer),
                _phases(ours),
                f"**{ours['own_speedup']:.2f}x**",
                f"**{ours['round_speedup']:.2f}x**",
                _phases(preset),
                f"{preset['own_speedup']:.2f}x / {preset['round_speedup']:.2f}x",
            ]
        )
    subjects = dict.fromkeys(row["subject"] for row in r["rows"])
    return [
        "### The whole client round",
        "",
        "`benchmarks/bench_round.py`: one FedFomo client round (evaluate the baseline and M candidates, weigh, "
        "update, one local epoch) of fomo-core's `FedFomoClient.round` against PFLlib's client round re-stated "
        "from its `clientfomo.py` (`benchmarks/pfllib_round.py`: train-mode evaluation with autograd on, "
        "per-layer aggregation). The candidates are the server's models, handed to every client by reference "
        "as PFLlib's server does; same model, data and training batches (PFLlib's defaults: batch "
        f"{r['batch_size']}, lr {r['lr']}). Each case first checks that fomo-core's round (its own policy with "
        "PFLlib's eps) and fomo-core running the `pfllib` preset give PFLlib's losses, its weights and update "
        "given the same losses, and the same local epoch bit for bit (fomo-core's own round evaluates in eval "
        f"mode, PFLlib in train mode: on ResNet-18 only the preset's losses compare). {r['torch_threads']} "
        "torch thread; every phase by the thread's CPU time, medians of interleaved rounds, milliseconds: "
        "eval / weights+update / train / copies = the round. FedFomo's own part is all but the training.",
        "",
        markdown_table(
            [
                "model",
                "M",
                "PFLlib",
                "fomo-core",
                "own part vs PFLlib",
                "round vs PFLlib",
                "fomo-core, `pfllib` preset",
                "preset: own part / round",
            ],
            rows,
        ),
        "",
        "Training (the same SGD on the same batches; fomo-core steps its flat parameter buffer in one call) is "
        "most of a round and bounds its ratio. fomo-core's own round does more than PFLlib's: its training check "
        "validates two more models (the model before local training, unless the federated update left it as it "
        "was, and the trained one), M + 3 forwards of the validation set against PFLlib's M + 1, and its guard "
        "rebalances the improving candidates (one Newton solve for all of them), most of its weights + update "
        "time on the MLP. On ResNet-18 the evaluation is convolutions, and fomo-core's forward (eval mode, no "
        "autograd, the input in channels_last) costs about plain torch's (`benchmarks/probe_forward.py`): "
        f"{_per_forward(r, 'ResNet-18')}. Its own part there is bounded by the forwards it runs, not by how "
        "it runs them.",
        "",
        " ".join(f"![{s}](benchmarks/results/round-{s.lower().replace(' ', '-')}.png)" for s in subjects),
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
            f"layers), float32, M = {c.get('M', '?')}, all improving; one thread, CPU time; effective bandwidth counts "
            "the bytes the op must move per second of CPU time, against a dot-product probe timed in the same rounds "
            f"({k['probe']['gbs']:.1f} GB/s). Full tables: `benchmarks/results/kernels.md`.",
            "",
            markdown_table(["method", "CPU ms", "GB/s", "of probe", "vs PFLlib-style loop"], rows),
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
    if k.get("dtypes"):
        out += _captioned(
            "Storage dtypes against float32 (the same call; the 16-bit formats are computed in float32, so "
            "they gain by the bytes they save):",
            ["dtype", "speed vs float32"],
            [[r["dtype"], f"{r['speedup_vs_float32']:.2f}x"] for r in k["dtypes"]],
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
        "participant's `candidates` (M rows read from the store), `receive` (a model written to it, and "
        "its contribution to the `fomo-core` preset's global model: one more [P] per upload) and "
        "`end_round`; a checkpoint of a store holds which row is whose and the global model (in its "
        "dtype), and loading it checks every row's CRC-32.",
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


# (result file, the function that writes its part of the section), in the section's order: a new
# benchmark subject adds its line here
SECTIONS = [("round", round_section), ("kernels", kernels_section), ("server", server_section)]
# subjects whose tables are in docs/benchmarks.md only (README names them and links there)
ELSEWHERE = ("candidate evaluation by route and model", "opt-in early stopping", "Flower at many clients")


def section() -> str:
    suite = _load("suite") or {}
    parts = [
        HEADING,
        "",
        "Every figure below comes from `python -m benchmarks` run in the repository "
        "(or `fomo-core bench`; `--quick` for a short run), written to `benchmarks/results/` with the "
        "machine's description, and this section is regenerated from those files by "
        "`python benchmarks/readme.py`. Times are CPU time (the calling thread's on one thread, the process's on "
        "more), which time the scheduler gives other processes on a shared machine does not inflate; ratios are "
        "against baselines timed in the same run, medians of interleaved repeats.",
        "",
    ]
    if suite:
        parts += [f"Measured on: {machine_line(suite)}.", ""]
    for name, make in SECTIONS:
        payload = _load(name)
        if payload:
            parts += make(payload)
    parts += [f"More, from the same run: {', '.join(ELSEWHERE)}: [benchmarks](docs/benchmarks.md).", ""]
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
