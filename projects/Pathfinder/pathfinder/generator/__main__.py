"""Command line: generate a Pathfinder data set (and a preview picture).

    python -m pathfinder.generator --out /tmp/pf --n 20000 --length 14 --preview pf.png
"""
import argparse
import dataclasses
import json

from .generator import PathfinderConfig
from .preview import preview_dataset
from .storage import PathfinderDataset, generate_dataset


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    p.add_argument("--preview", help="write a PNG grid of the first samples here")
    for f in dataclasses.fields(PathfinderConfig):
        kind = f.type if f.type in (int, float, str) else (int if f.name == "distractor_length" else None)
        if kind is not None:
            p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default)
    args = p.parse_args(argv)
    cfg = PathfinderConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(PathfinderConfig)})
    manifest = generate_dataset(args.out, cfg, args.n, args.seed, args.workers)
    print(json.dumps(manifest["stats"]))
    if args.preview:
        preview_dataset(args.preview, PathfinderDataset(args.out))
        print(f"preview: {args.preview}")


if __name__ == "__main__":
    main()

