"""One end-to-end audit per architecture of the zoo at 224 × 224 px, through the CLI as a user runs it (issue 14,
item 4): ``spray attribute`` (EpsilonPlusFlat, the default, whose relevance accounting on the first batch must
pass: no ``--allow-nonconservative``), then ``spray info --json``, ``spray analyze --json`` and ``spray rank --json``
on the store. At 32 px DenseNet-121 ends on a 1 × 1 map and a ViT/16 sees four tokens; 224 px is their size.

Models: each factory of spray.zoo at its defaults (torchvision's or timm's layout, 1000 classes, 224 px), built
seeded, with drawn BatchNorm statistics, LayerNorm affine parameters and zero-initialised parameters (heads,
biases, class tokens: spray.zoo.statistics), saved as a state_dict and given as ``--model spray.zoo:FACTORY
--weights FILE``. Data: ``--n`` images per class of two classes, seeded random square crops of scikit-image's
bundled astronaut and coffee photographs (half to all of the shorter side, flipped at random) resized to
224 px and written as PNG into ``folder:DIR?names=names.txt`` (the names file gives the model's 1000 outputs;
the two folders are outputs 0 and 1), read with ``--normalize imagenet``. Offline: nothing is downloaded.

Each command runs in its own process, as ``python -m spray.cli`` with this tree first on PYTHONPATH; wall
seconds around it, CPU seconds (user + system) as the change of this process's RUSAGE_CHILDREN, and peak RSS
as GNU time's "Maximum resident set size" of the command (``/usr/bin/time -v``; without it, not measured:
``ru_maxrss`` of a child carries this process's resident size over the fork). The analysis uses
``--pipeline`` (default pipelines/fast.toml: the default pipeline needs more than 32 samples per class).

Run: python tests/benchmarks/bench_zoo224.py [--archs vgg16_bn,resnet18,...] [--n 20] [--batch-size 8]
     [--pipeline pipelines/fast.toml] [--docs docs/benchmarks.md]   (replaces the block between this
     script's markers there)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as samples

from docs_block import write_block  # this folder, first on sys.path when run as a script
from spray import zoo
from spray.benchmark.scorecard import machine
from spray.seeding import seeded

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURES = ("vgg16_bn", "resnet18", "resnet50", "densenet121", "mobilenet_v2", "efficientnet_b0",
                 "convnext_tiny", "vit_tiny_16", "timm_vit_tiny_16")
"""Factories of spray.zoo, each called without arguments (1000 classes, 224 px)."""
CLASSES = {"astronaut": samples.astronaut, "coffee": samples.coffee}
"""Class folder -> the bundled photograph its images are cropped from."""
SIDE, OUTPUTS, SEED = 224, 1000, 0
GNU_TIME = Path("/usr/bin/time")
RANKED = ("class", "name", "n_samples", "clustering", "cluster", "cluster_size", "score", "flagged")
"""What is kept of each class of ``spray rank --json``."""


def image_folder(root: Path, n: int) -> str:
    """Write ``n`` seeded 224-px PNG crops per class under ``root`` and the names file; the ``--data`` spec."""
    rng = np.random.default_rng(SEED)
    for name, photograph in CLASSES.items():
        image = photograph()
        (root / name).mkdir(parents=True)
        short = min(image.shape[:2])
        for i in range(n):
            side = int(rng.integers(short // 2, short + 1))
            top, left = (int(rng.integers(0, extent - side + 1)) for extent in image.shape[:2])
            crop = image[top:top + side, left:left + side]
            crop = crop[:, ::-1] if rng.random() < 0.5 else crop
            resized = Image.fromarray(np.ascontiguousarray(crop)).resize((SIDE, SIDE), Image.BILINEAR)
            resized.save(root / name / f"{i}.png")
    names = [*CLASSES, *(f"class_{i}" for i in range(len(CLASSES), OUTPUTS))]
    (root / "names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    return f"folder:{root}?names=names.txt"


def save_weights(architecture: str, path: Path) -> None:
    """The zoo's ``architecture``, seeded, with no normalisation the identity and no parameter zero, as a
    state_dict file."""
    with seeded(SEED):
        model = getattr(zoo, architecture)()
        zoo.draw_zero_parameters(zoo.randomize_layer_norms(zoo.randomize_batch_norms(model)))
    torch.save(model.state_dict(), path)


@dataclass(frozen=True)
class Step:
    """One CLI command: its exit code, wall and CPU seconds, peak RSS (GiB; None unmeasured) and output."""

    rc: int
    wall_s: float
    cpu_s: float
    rss_gib: float | None
    stdout: str
    stderr: str

    def message(self) -> str:
        """The last line of stderr: what a failed command said."""
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def spray_cli(args: list[str], scratch: Path) -> Step:
    """Run ``python -m spray.cli ARGS`` in a process of its own (under GNU time when there is one)."""
    stats = scratch / "time.txt"
    timed = [str(GNU_TIME), "-v", "-o", str(stats)] if GNU_TIME.exists() else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    done = subprocess.run([*timed, sys.executable, "-m", "spray.cli", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, check=False)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    rss = None
    if timed:
        found = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stats.read_text(encoding="utf-8"))
        rss = int(found.group(1)) / 2**20 if found else None
    return Step(done.returncode, wall, cpu, rss, done.stdout, done.stderr)


def audit(architecture: str, data: str, n: int, batch_size: int, pipeline: Path, scratch: Path) -> dict:
    """attribute, info, analyze and rank of one architecture; what each measured, as a printable dict."""
    weights, store = scratch / f"{architecture}.pt", scratch / f"{architecture}.h5"
    save_weights(architecture, weights)
    step = spray_cli(["attribute", "--model", f"spray.zoo:{architecture}", "--weights", str(weights), "--data", data,
                      "--normalize", "imagenet", "--store", str(store), "--batch-size", str(batch_size)], scratch)
    weights.unlink()
    row = {"architecture": architecture, "attribute_rc": step.rc, "wall_s": round(step.wall_s, 1),
           "cpu_s": round(step.cpu_s, 1), "wall_per_image_s": round(step.wall_s / n, 2),
           "cpu_per_image_s": round(step.cpu_s / n, 2), "rss_gib": step.rss_gib and round(step.rss_gib, 2)}
    print(architecture, "attribute", row, load(), flush=True)
    if step.rc != 0:
        return {**row, "error": step.message()}
    info = spray_cli(["info", str(store), "--json"], scratch)
    if info.rc != 0:
        return {**row, "error": f"spray info: {info.message()}"}
    row["input_share"] = json.loads(info.stdout)["attributions"]["epsilon_plus_flat"]["input_share"]
    print(architecture, "input share", row["input_share"], flush=True)
    step = spray_cli(["analyze", str(store), "--pipeline", str(pipeline), "--json"], scratch)
    row |= {"analyze_rc": step.rc, "analyze_wall_s": round(step.wall_s, 1), "analyze_cpu_s": round(step.cpu_s, 1)}
    if step.rc != 0:
        return {**row, "error": step.message()}
    analysis = json.loads(step.stdout)
    row |= {"analysed": sorted(analysis["computed"]), "skipped": analysis["skipped"]}
    ranked = spray_cli(["rank", str(store), "--analysis", analysis["analysis"], "--json"], scratch)
    row["rank_rc"] = ranked.rc
    if ranked.rc == 0:
        row["ranked"] = [{key: entry[key] for key in RANKED} for entry in json.loads(ranked.stdout)]
    print(architecture, "analysis", {k: v for k, v in row.items() if k.startswith(("analy", "skip", "rank"))},
          flush=True)
    return row


def load() -> str:
    return "load average " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def table(rows: list[dict], n: int, batch_size: int, pipeline: Path, header: str) -> str:
    """The Markdown table of the docs, with the run's setting above it."""
    lines = [f"{header}; {n} images per class × {len(CLASSES)} classes of 3 × {SIDE} × {SIDE}, batch "
             f"{batch_size}, `--pipeline {pipeline.relative_to(ROOT) if pipeline.is_relative_to(ROOT) else pipeline}`"
             ". Exit codes: attribute / analyze / rank; seconds: wall / CPU.", "",
             "| architecture | exit codes | attribute s | per image s | peak RSS GiB | input share Σ R / f: median "
             "(min … max) | within 5 % of 1 | analysis: classes analysed; rank 1 (z); flagged |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        codes = " / ".join(str(row[key]) if key in row else "–" for key in ("attribute_rc", "analyze_rc", "rank_rc"))
        rss = "–" if row["rss_gib"] is None else f"{row['rss_gib']:.2f}"
        share = row.get("input_share", {})
        if share.get("n"):
            shares = f"{share['median']:.3f} ({share['min']:.3f} … {share['max']:.3f})"
            within = f"{share['within_5pct']}/{share['n']}"
        else:
            shares = within = "–"
        if "error" in row:
            analysis = f"failed: {row['error']}"
        elif not row["analysed"]:
            analysis = f"none analysed: {row['skipped']}"
        elif "ranked" not in row:
            analysis = f"{len(row['analysed'])} of {len(CLASSES)}; rank failed"
        else:
            top, flagged = row["ranked"][0], sum(bool(entry["flagged"]) for entry in row["ranked"])
            analysis = (f"{len(row['analysed'])} of {len(CLASSES)}; {top['name']}: {top['clustering']} cluster "
                        f"{top['cluster']} ({top['cluster_size']} of {top['n_samples']}), z {top['score']:.2f}; "
                        f"{flagged} flagged")
        lines.append(f"| {row['architecture']} | {codes} | {row['wall_s']:.1f} / {row['cpu_s']:.1f} | "
                     f"{row['wall_per_image_s']:.2f} / {row['cpu_per_image_s']:.2f} | {rss} | {shares} | {within} | "
                     f"{analysis} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", default=",".join(ARCHITECTURES), help="spray.zoo factories, comma-separated.")
    parser.add_argument("--n", type=int, default=20, help="Images per class (fast.toml analyses more than 16).")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--pipeline", type=Path, default=ROOT / "pipelines" / "fast.toml")
    parser.add_argument("--docs", type=Path, help="Markdown file whose marked table block is replaced.")
    args = parser.parse_args()
    unknown = [a for a in args.archs.split(",") if a not in ARCHITECTURES]
    if unknown:
        parser.error(f"unknown architecture(s) {', '.join(unknown)}; choose from {', '.join(ARCHITECTURES)}")
    header = (f"{machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
              f"{'peak RSS by GNU time' if GNU_TIME.exists() else 'peak RSS not measured (no /usr/bin/time)'}")
    print(header, load(), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_zoo224_") as scratch:
        data = image_folder(Path(scratch) / "images", args.n)
        for architecture in args.archs.split(","):
            rows.append(audit(architecture, data, args.n * len(CLASSES), args.batch_size, args.pipeline.resolve(),
                              Path(scratch)))
    print(load())
    text = table(rows, args.n, args.batch_size, args.pipeline.resolve(), header)
    print(text)
    if args.docs:
        write_block(args.docs, "bench_zoo224", text)


if __name__ == "__main__":
    main()
