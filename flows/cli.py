"""The `archive-colorize` command line."""

from __future__ import annotations

import argparse
from pathlib import Path


def _demo(args: argparse.Namespace) -> None:
    from PIL import Image
    from skimage import data

    import models
    from pipeline.colorize import colorize_images

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if models.DEFAULT_MODEL.is_file():
        model = models.load("default")
        print(f"model: {models.DEFAULT_MODEL}")
    else:
        model = models.build("small").eval()
        print("NOTE: no trained default model is shipped yet: using an UNTRAINED small network, "
              "so the colours are meaningless (the pipeline around it is real).")
    names = ["astronaut", "coffee", "chelsea"]
    grays = [Image.fromarray(getattr(data, n)()).convert("L") for n in names]
    for name, gray, colour in zip(names, grays, colorize_images(model, grays), strict=True):
        gray.save(out / f"{name}_gray.png")
        colour.save(out / f"{name}_colorized.png")
        print(f"  {out / (name + '_colorized.png')}  {colour.size[0]}x{colour.size[1]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archive-colorize", description="Bulk colorization of grayscale photo archives."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="colorize the photos bundled with scikit-image")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
