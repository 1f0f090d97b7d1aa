"""The `archive-colorize` command line: thin wrappers around the flows."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from pipeline.colorize.precision import CHOICES as PRECISION_CHOICES
from pipeline.imaging.images import DEFAULT_MAX_PIXELS
from pipeline.training.config import (
    ARCHITECTURES,
    LITE_DROPOUT,
    OPTIONS,
    SPLIT_OPTIONS,
    option_defaults,
)

DEMO_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")


def _colorize(args: argparse.Namespace) -> int:
    from flows.colorize import colorize_archive

    result = colorize_archive(
        source=args.source,
        dest=args.dest,
        model=args.model,
        temperature=args.temperature,
        batch_size=args.batch_size,
        actors=args.actors,
        ray_address=args.ray_address,
        shard_size=args.shard_size,
        image_column=args.image_column,
        id_column=args.id_column,
        output_format=args.format,
        quality=args.quality,
        max_pixels=args.max_pixels,
        metrics_max_side=args.metrics_max_side,
        precision=args.precision,
        in_flight=args.in_flight,
        max_attempts=args.max_attempts,
        s3_endpoint_url=args.s3_endpoint_url,
        show_progress=True,
        recolorize=args.recolorize,
        add_source=args.add_source,
        hints=args.hints,
    )
    _print_summary(result, args.dest)
    failed = bool(result["shards"]["failed"])
    if args.export:
        failed |= _run_export(args.dest, args.export, args) != 0
    return 1 if failed else 0


def _export(args: argparse.Namespace) -> int:
    return _run_export(args.dest, args.out, args)


def _run_export(dest: str, out: str, args: argparse.Namespace) -> int:
    from flows.export import export_archive
    from pipeline.review.report import models_line

    result = export_archive(
        dest=dest,
        out=out,
        quality=args.quality,
        ray_address=args.ray_address,
        s3_endpoint_url=args.s3_endpoint_url,
    )
    print(
        f"export: {result['files']} files in {out} ({result['exported']} written this run, "
        f"{result['shards_skipped']} of {result['shards']} shards unchanged); "
        f"{result['errors']} rows not exported, listed in {result['errors_csv']}"
    )
    print(f"  made by: {models_line(result['models'])}")
    if len(result["models"]) > 1:
        print("  warning: more than one model in DEST; `colorize --recolorize` redoes it with one")
    return 0


def _print_summary(result: dict[str, Any], dest: str) -> None:
    from pipeline.archive import storage
    from pipeline.review.report import models_line

    run = result["this_run"]
    print(
        f"{result['images']} images in the archive ({result['ok']} ok, {result['errors']} errors); "
        f"this run: {run['images']} images in {run['seconds']:.1f} s "
        f"({run['images_per_second']:.2f} images/s); shards: {result['shards']['done']} done, "
        f"{result['shards']['skipped']} skipped, {len(result['shards']['failed'])} failed"
    )
    if result.get("models"):
        print(f"  made by: {models_line(result['models'])}")
    if result.get("metadata_dropped"):
        dropped = ", ".join(f"{k} {n}" for k, n in result["metadata_dropped"].items())
        print(f"  damaged metadata dropped (images still ok): {dropped}")
    for name in ("report.md", "report.json", "metrics.png", "contact_sheet.png"):
        print(f"  {storage.join(dest, name)}")
    if result.get("gallery"):
        print(f"  {result['gallery']}  (review gallery: open it in a browser)")


# train's and crossval's recipe: TrainConfig's options (but the split, which crossval sets per
# fold) and where the prepared data is kept; every default is TrainConfig's (TRAIN_DEFAULTS)
RECIPE_OPTIONS = (*(name for name in OPTIONS if name not in SPLIT_OPTIONS), "prepared_data")
TRAIN_DEFAULTS = option_defaults()


def _recipe(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name) for name in RECIPE_OPTIONS}


def _train(args: argparse.Namespace) -> int:
    from flows.train import train_model

    result = train_model(
        source=args.source,
        out=args.out,
        **{name: getattr(args, name) for name in SPLIT_OPTIONS},
        ray_address=args.ray_address,
        s3_endpoint_url=args.s3_endpoint_url,
        show_progress=True,
        **_recipe(args),
    )
    print(f"model: {result['model']} ({result['train_images']} training photos)")
    _print_evaluation(result)
    return 0


def _stamps(args: argparse.Namespace) -> int:
    from pipeline.training.stamps import select_stamps

    rows = select_stamps(args.root, args.out)
    print(f"{len(rows)} photographic stamps in {args.out} (licences: {args.out}/stamps.tsv)")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from pipeline.colorize.precision import MAX_CHECK_AB_P95, twin_within_tolerance
    from pipeline.training.quantize import QuantizeUnavailable, build_int8_twin, skipped_line

    try:
        card = build_int8_twin(
            args.model, args.photo_dir, args.photos, args.check, args.corpus, progress=print
        )
    except (ValueError, QuantizeUnavailable) as exc:
        print(f"archive-colorize quantize: error: {exc}", file=sys.stderr)
        return 2
    calibration, check = card["calibration"], card["check"]
    fewer = calibration["count"] < calibration["asked"]
    print(
        f"int8 twin of {card['source_model']['file']}: calibrated on {calibration['count']} "
        f"photos{' (the folder has no more that decode)' if fewer else ''}, built in "
        f"{card['build_seconds']} s; skipped: {skipped_line(calibration['skipped'])}"
    )
    figures = check.get("vs_fp32")
    if figures is None:
        print(f"not checked against fp32: {check['note']}")
        return 0
    print(
        f"vs fp32 on {check['count']} held-out photos: ab error p50 {figures['ab_p50']:.2f}, "
        f"p95 {figures['ab_p95']:.2f}, p99 {figures['ab_p99']:.2f}; chroma ratio "
        f"{figures['chroma_ratio']:.3f}"
    )
    within = "yes" if twin_within_tolerance(card) else "no"
    print(f"--precision auto runs it (check p95 <= {MAX_CHECK_AB_P95} ab): {within}")
    return 0


def _crossval(args: argparse.Namespace) -> int:
    from flows.crossval import cross_validate

    result = cross_validate(
        source=args.source,
        out=args.out,
        recipe=_recipe(args),
        folds=args.folds,
        by_folder=args.by_folder,
        groups=args.groups,
        decodings=args.decodings,
        ray_address=args.ray_address,
        s3_endpoint_url=args.s3_endpoint_url,
        show_progress=True,
        final=args.final,
    )
    for inputs in ("clean", "old_print"):
        for name, f in result[inputs].items():
            print(f"{inputs:9s} {name:34s} {f['mean']:+7.2f} +- {f['std']:.2f} "
                  f"({f['folds']} folds)")  # fmt: skip
    if result.get("decoding"):
        chosen = result["decoding"]["chosen"]
        print(f"decoding chosen by the folds (temperature x chroma gain): {chosen}")
    print(f"report: {args.out}/crossval.md")
    if result.get("final"):
        print(f"model trained on every photo, its card with these figures: {result['final']}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from flows.evaluate import evaluate_model

    result = evaluate_model(
        source=args.source,
        model=args.model,
        out=args.out,
        split=args.split,
        val_fraction=args.val_fraction,
        fold=args.fold,
        holdout=args.holdout,
        degrade=args.degrade,
        film=args.film,
        hints=args.hints,
        temperature=args.temperature,
        chroma_gain=args.chroma_gain,
        flip_average=args.flip_average,
        precision=args.precision,
        image_column=args.image_column,
        id_column=args.id_column,
        ray_address=args.ray_address,
        s3_endpoint_url=args.s3_endpoint_url,
    )
    if result.get("film"):
        print(f"film: {result['film']} (model and gray baseline see its gray as L)")
    _print_evaluation(result)
    print(f"report: {args.out}/evaluation.md, {args.out}/contact_sheet.png")
    return 0


def _print_evaluation(result: dict[str, Any]) -> None:
    print(f"{result['images']} colour photos of the {result['split']} split")
    hinted = bool(result.get("hints"))
    if hinted:
        print(f"model given {result['hints']} hints per photo from the true colours; "
              f"automatic: the same model given none")  # fmt: skip
    columns = ("model", "automatic", "gray") if hinted else ("model", "gray")
    print(f"  {'metric':20s}" + "".join(f" {c:>10s}" for c in columns))
    for name, m in result["metrics"].items():
        print(f"  {name:20s}" + "".join(f" {m[c]:10.4f}" for c in columns))
    error = result.get("hint_error") or {}
    if error.get("median") is not None:
        print(f"ab error at the {error['points']} hint points: median {error['median']:.2f}")
    doubt = result.get("uncertainty") or {}
    if doubt.get("spearman") is not None:
        print(
            f"uncertainty vs ab error: Spearman {doubt['spearman']:.2f} ({doubt['images']} images)"
        )


def _pack(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pipeline.archive import storage
    from pipeline.archive.pack import pack_images

    storage.configure(args.s3_endpoint_url)
    with tqdm(unit="shard") as bar:

        def on_shard(uri: str, images: int) -> None:
            bar.update(1)
            bar.set_postfix(images=images)

        shards = pack_images(args.source, args.dest, args.shard_size, on_shard=on_shard)
    print(f"{len(shards)} shards under {args.dest}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Pack the photos bundled with scikit-image into a small archive and colorize it."""
    from PIL import Image
    from skimage import data

    import models
    from flows.colorize import colorize_archive
    from pipeline.archive.pack import pack_images

    out = Path(args.out)
    photos = out / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for name in DEMO_PHOTOS:
        Image.fromarray(getattr(data, name)()).convert("RGB").save(
            photos / f"{name}.jpg", quality=95
        )
    Image.fromarray(data.camera()).save(photos / "camera_gray.png")  # a real grayscale input
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # an error row
    pack_images(str(photos), str(out / "archive"), shard_size=4)
    model = "default"
    if not models.DEFAULT_MODEL.is_file():
        model = str(out / "untrained-small.safetensors")
        models.save(models.build("small"), model)
        print(
            "NOTE: no trained default model is shipped yet: using an UNTRAINED small network, "
            "so the colours are meaningless (the pipeline around it is real)."
        )
    result = colorize_archive(
        source=str(out / "archive"), dest=str(out / "colorized"), model=model, show_progress=True
    )
    _print_summary(result, str(out / "colorized"))
    return 0


def _train_option(parser: argparse.ArgumentParser, flag: str, **kwargs: Any) -> None:
    """A recipe option of train/crossval (or the split's, shared with evaluate): its default
    and type are TrainConfig's, so the command line cannot drift from the flow."""
    default = TRAIN_DEFAULTS[flag[2:].replace("-", "_")]
    if default is not None and "choices" not in kwargs:
        kwargs.setdefault("type", type(default))
    parser.add_argument(flag, default=default, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="archive-colorize",
        description="Bulk colorization of grayscale photo archives (Zhang et al., ECCV 2016).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    col = sub.add_parser(
        "colorize",
        help="colorize an archive (Parquet shards or image files, local or s3://)",
        description="Colorize every image of SOURCE into DEST. Re-running resumes: shards "
        "with a stats file in DEST/_stats are skipped. DEST/_manifest.json records the model "
        "and the settings that change the output, and the SOURCE; a run with other settings "
        "refuses unless --recolorize, one from another SOURCE unless --add-source.",
    )
    col.add_argument("source", help="folder or s3:// prefix of Parquet shards or image files")
    col.add_argument("dest", help="output folder or s3:// prefix")
    col.add_argument(
        "--model", default="default", help="checkpoint path or s3:// URI, or 'default'"
    )
    col.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="annealed-mean T (default: the model's own, from its card; 0.38 for the shipped one)",
    )
    col.add_argument(
        "--batch-size", type=int, default=8, help="images per forward pass (default 8)"
    )
    col.add_argument(
        "--actors",
        type=int,
        default=None,
        help="actors (default: one per GPU, else one per CPU node; nodes that join get one)",
    )
    col.add_argument(
        "--ray-address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster (default: local)"
    )
    col.add_argument("--shard-size", type=int, default=256, help="files per shard for folders")
    col.add_argument("--image-column", default="image", help="Parquet image column (binary/struct)")
    col.add_argument("--id-column", default="id", help="Parquet id column (else shard:row)")
    col.add_argument("--format", choices=("jpeg", "png"), default="jpeg", help="output encoding")
    col.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    col.add_argument(
        "--export",
        metavar="OUT",
        default=None,
        help="then write the results as image files under OUT (see the export command)",
    )
    col.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="decompression-bomb limit"
    )
    col.add_argument(
        "--metrics-max-side",
        type=int,
        default=512,
        help="score PSNR, SSIM and AuC on a copy at most this large (default 512; 0: full "
        "resolution); colourfulness is always taken at full size",
    )
    col.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="fp32",
        help="the network's number type: bf16 (autocast) on CUDA or on a CPU with native "
        "bf16 (AVX512-BF16/AMX), fp16 on CUDA only, int8 on CPUs by the model's int8 twin; "
        "auto: each worker the fastest within the tolerance for its hardware (int8, else "
        "bf16, else fp32; docs/benchmarks.md) (default fp32)",
    )
    col.add_argument(
        "--recolorize",
        action="store_true",
        help="DEST was made with another model or settings (DEST/_manifest.json): redo every "
        "shard with these, each replaced when its new output commits (without it, such a run "
        "refuses and writes nothing); a stopped recolorize resumes",
    )
    col.add_argument(
        "--add-source",
        action="store_true",
        help="SOURCE is not the one DEST was made from (DEST/_manifest.json): add it to DEST on "
        "purpose, its shards and ids named in a namespace of its own (without it, such a run "
        "refuses and writes nothing)",
    )
    col.add_argument(
        "--hints",
        metavar="FILE",
        default=None,
        help="a hints file (local or s3://; the review gallery downloads one): colour hints "
        'per row id, {"<id>": [{"x": 0.42, "y": 0.31, "rgb": "#8a2a1e", "r": 0.01}]} (x, y: '
        "shares of the width and height; r, optional: of the short side). Colorizes again "
        "exactly the shards holding those ids, with their hints, and nothing else; DEST keeps "
        "the hints (DEST/_hints.json) for every later run. Needs a hint-aware model",
    )
    col.add_argument("--in-flight", type=int, default=2, help="shards queued per actor (default 2)")
    col.add_argument("--max-attempts", type=int, default=3, help="tries per shard (default 3)")
    col.add_argument(
        "--s3-endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3 endpoint for MinIO/Ceph/R2 (default: AWS_ENDPOINT_URL or AWS)",
    )
    col.set_defaults(func=_colorize)

    where = argparse.ArgumentParser(add_help=False)  # where it runs and stores
    where.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster (default: RAY_ADDRESS, else a local Ray)",
    )
    where.add_argument(
        "--s3-endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3 endpoint for MinIO/Ceph/R2 (default: AWS_ENDPOINT_URL or AWS)",
    )
    common = argparse.ArgumentParser(add_help=False, parents=[where])
    _train_option(common, "--image-column", help="Parquet image column")
    _train_option(common, "--id-column", help="Parquet id column")
    _train_option(common, "--val-fraction", help="validation share (default %(default)s)")
    _train_option(
        common,
        "--fold",
        help="validation fold: the ids hashed into [fold, fold + 1) x --val-fraction (default "
        "%(default)s)",
    )
    _train_option(
        common,
        "--holdout",
        help="instead of a fold, hold out every photo under this top folder of the ids, or "
        "these comma-separated ones (a packed folder's ids are its paths): sources the model "
        "never sees",
    )
    recipe = argparse.ArgumentParser(add_help=False)  # what `train` trains, and how
    _train_option(
        recipe,
        "--arch",
        choices=ARCHITECTURES,
        help="network: lite0/lite2 (an ImageNet EfficientNet-Lite encoder under the context "
        "decoder; -plain: the plain decoder), small or eccv16 (from scratch) (default "
        "%(default)s, the shipped default's)",
    )
    _train_option(recipe, "--steps", help="optimizer steps (default %(default)s)")
    _train_option(recipe, "--batch-size", help="per worker (default %(default)s)")
    _train_option(recipe, "--lr", help="Adam learning rate (default %(default)s)")
    _train_option(
        recipe,
        "--lr-schedule",
        choices=("cosine", "constant"),
        help="after warm-up (default %(default)s)",
    )
    _train_option(recipe, "--crop", help="random crop size (default %(default)s)")
    _train_option(
        recipe,
        "--prepared",
        type=int,
        help="side of the square each photo is resized to once; crops are drawn in it "
        "(default: 16/11 of --crop, 256 for 176, as the paper's data layer)",
    )
    _train_option(
        recipe,
        "--scale-min",
        help="random resized crops: least area fraction of the square (default %(default)s; "
        "1: plain)",
    )
    _train_option(
        recipe,
        "--trainable-stages",
        help="lite*: top encoder stages (of 7, +1 for the stem) that train (default "
        "%(default)s: frozen)",
    )
    _train_option(
        recipe, "--unfreeze-at", help="lite*: step from which those stages learn (%(default)s)"
    )
    _train_option(
        recipe,
        "--encoder-lr-scale",
        help="lite*: their learning rate as a fraction of --lr (default %(default)s)",
    )
    _train_option(
        recipe,
        "--ema-decay",
        help="ship a moving average of the weights with this decay (default %(default)s; 0: off)",
    )
    _train_option(
        recipe,
        "--weight-decay",
        help="Adam weight decay (L2) of the trained weights (default %(default)s)",
    )
    _train_option(
        recipe,
        "--dropout",
        type=float,
        help=f"lite*: dropout before the classifier while training (default {LITE_DROPOUT} "
        "for lite*; small and eccv16 have no dropout layer and refuse a rate above 0)",
    )
    _train_option(
        recipe,
        "--degrade",
        help="share of training crops whose L input is degraded as an old print (faded, soft, "
        "grain, dust, JPEG) at random strengths; the target keeps the clean colours "
        "(default %(default)s)",
    )
    _train_option(
        recipe,
        "--film",
        help="share of training crops whose L input is the gray of a random film response "
        "(orthochromatic, panchromatic, or panchromatic behind a yellow, orange or red filter) "
        "instead of Lab's L, before any --degrade; the target keeps the true colours "
        "(default %(default)s)",
    )
    _train_option(
        recipe,
        "--hints",
        help="-hints architectures: share of training crops given simulated colour hints "
        "(points of their true colour, a geometric number of them); the rest get none, so "
        "the model stays automatic too (0.5 is a good start; default %(default)s)",
    )
    _train_option(
        recipe,
        "--hint-points",
        help="mean number of simulated hint points on a hinted crop (default %(default)s)",
    )
    _train_option(
        recipe,
        "--stamps",
        help="folder or s3:// prefix of photographic cut-outs (RGBA PNG) to paste onto "
        "training crops (make stamp-corpus STAMPS=DIR builds one from tuxpaint-stamps-default)",
    )
    _train_option(recipe, "--paste", help="share of crops that get a stamp (default %(default)s)")
    _train_option(recipe, "--workers", help="Ray Train workers (DDP) (default %(default)s)")
    _train_option(
        recipe, "--checkpoint-every", help="steps between checkpoints (default %(default)s)"
    )
    _train_option(recipe, "--soft-k", help="soft-encoding neighbours (default %(default)s)")
    recipe.add_argument(
        "--prepared-data",
        default=None,
        help="where the prepared squares and the prior's counts are kept, local or s3:// "
        "(default OUT/prepared); runs on the same corpus with the same preparation settings "
        "share them (a subfolder per settings hash) and decode no photo again",
    )
    _train_option(
        recipe,
        "--val-every",
        help="score the shipped weights on the validation split every N steps and ship the "
        "best checkpoint (default %(default)s: off)",
    )
    _train_option(
        recipe,
        "--val-max-photos",
        help="validation photos scored each time (the first N of the split; default %(default)s)",
    )
    _train_option(
        recipe,
        "--patience",
        help="stop after N validations without gain (default %(default)s: never)",
    )
    _train_option(
        recipe,
        "--loader-threads",
        help="threads per worker decoding and cropping ahead of the step (default %(default)s)",
    )
    _train_option(recipe, "--seed", help="crops, flips and init (default %(default)s)")
    _train_option(
        recipe,
        "--init",
        help="fine-tune a model: 'default', a .safetensors path or s3:// URI; its weights, "
        "architecture (--arch must name it) and prior replace ImageNet's and the data's "
        "(docs/training.md, 'Adapting a model to your own collection')",
    )

    train = sub.add_parser(
        "train",
        parents=[common, recipe],
        help="train a model on colour photos (Ray Train); re-running resumes",
        description="Train on the colour photos of SOURCE (Parquet archive or image folder) "
        "into OUT: checkpoints, model.safetensors + model.json, loss.png, evaluation/.",
    )
    train.add_argument("source", help="colour photos: Parquet archive or image folder/prefix")
    train.add_argument("out", help="run folder or s3:// prefix (checkpoints, model, report)")
    train.set_defaults(func=_train)

    cv = sub.add_parser(
        "crossval",
        parents=[where, recipe],
        help="k-fold cross-validation of a training recipe (mean and spread over folds)",
        description="Train the recipe (the train command's options) once per fold of SOURCE, "
        "holding that fold out, and score each model on it against the gray baseline, clean "
        "and as old prints: OUT/crossval.md and crossval.json. Re-running resumes.",
    )
    cv.add_argument("source", help="colour photos: Parquet archive or image folder/prefix")
    cv.add_argument(
        "out", help="folder or s3:// prefix: fold-N/ (or group-K/) runs, crossval.md/.json"
    )
    cv.add_argument("--folds", type=int, default=5, help="folds, by id hash (default 5)")
    cv.add_argument(
        "--by-folder",
        action="store_true",
        help="one fold per top folder of the ids instead (leave one source out: each model "
        "is scored on photos from a source it never saw); --folds is then not used",
    )
    cv.add_argument(
        "--groups",
        type=int,
        metavar="N",
        help="N folds (2..20) of whole top folders of similar size instead (OUT/group-K: each "
        "model scored on sources it never saw, in fewer and steadier folds than --by-folder; "
        "the same corpus always gives the same groups); --folds is then not used",
    )
    cv.add_argument(
        "--decodings",
        type=lambda text: [d for d in text.split(",") if d.strip()],
        metavar="T[xG],...",
        help="also score each fold model decoded at these temperatures, each with an optional "
        "chroma gain (e.g. 0.26,0.18,0.26x1.15), and choose the decoding to ship by the folds: "
        "of those whose mean colourfulness reaches 72 %% of the truth's, the best raw AuC (the "
        "model's own is always a candidate); --final's model decodes so",
    )
    cv.add_argument(
        "--final",
        action="store_true",
        help="then train the recipe on every photo into OUT/final (the model to ship; its "
        "card carries the cross-validated figures)",
    )
    _train_option(cv, "--image-column", help="Parquet image column")
    _train_option(cv, "--id-column", help="Parquet id column")
    cv.set_defaults(func=_crossval)

    st = sub.add_parser(
        "stamps",
        help="select the photographic cut-outs of an unpacked tuxpaint-stamps-default",
        description="Write the photographic stamps under ROOT (the package unpacked with "
        "dpkg-deb -x) to OUT as RGBA PNGs, with OUT/stamps.tsv recording each one's path and "
        "licence (GPL-2.0). The rule is in pipeline/training/stamps.py. `make stamp-corpus "
        "STAMPS=OUT` downloads, unpacks and selects in one command.",
    )
    st.add_argument("root", help="folder the .deb was unpacked into")
    st.add_argument("out", help="folder for the chosen stamps")
    st.set_defaults(func=_stamps)

    qu = sub.add_parser(
        "quantize",
        help="build a model's int8 twin (what --precision int8 runs) from a folder of photos",
        description="Quantize MODEL's network (without hints) to int8 with nncf, calibrated on "
        "photos of PHOTO_DIR, and write its int8 twin beside it: NAME.int8.xml/.bin (OpenVINO "
        "IR) and NAME.int8.json, its card (the photos by relative path, the rule that chose "
        "them, the twin's ab error against fp32 on held-out photos). The photos: the sorted "
        ".jpg/.jpeg/.png/.tif/.tiff/.webp files under PHOTO_DIR (links followed) dealt "
        "round-robin over its top folders; one that does not decode is skipped and named. "
        "Needs the quantize extra: pip install 'archive-colorize[quantize]'.",
    )
    qu.add_argument(
        "model",
        help="checkpoint (.safetensors) or 'default'; the twin goes beside it (for 'default': "
        "it replaces the shipped twin, whose card's evaluate figures then go)",
    )
    qu.add_argument("photo_dir", help="folder of photos like those the model will colour")
    qu.add_argument(
        "--photos",
        type=int,
        default=64,  # pipeline.training.quantize.DEFAULT_CALIBRATION
        metavar="N",
        help="calibration photos (default 64, as the shipped default's twin; at least 4)",
    )
    qu.add_argument(
        "--check",
        type=int,
        default=16,  # pipeline.training.quantize.DEFAULT_CHECK
        metavar="N",
        help="held-out photos (the next ones after calibration's) the twin is checked on "
        "against fp32 (default 16; 0: none)",
    )
    qu.add_argument(
        "--corpus",
        default=None,
        metavar="TEXT",
        help="how PHOTO_DIR is made, recorded in the card instead of its path (e.g. "
        "'../shared/data/build-photo-corpus --all OUT_DIR')",
    )
    qu.set_defaults(func=_quantize)

    from pipeline.imaging.degrade import FILMS  # evaluate --film's names

    ev = sub.add_parser(
        "evaluate",
        parents=[common],
        help="score a model against the gray baseline on an archive of colour photos",
    )
    ev.add_argument("source", help="colour photos: Parquet archive or image folder/prefix")
    ev.add_argument("--model", default="default", help="checkpoint path or s3:// URI, or 'default'")
    ev.add_argument("--out", default="out/evaluate", help="report folder (out/evaluate)")
    ev.add_argument(
        "--split",
        choices=("val", "train", "all"),
        default="val",
        help="rows scored, by id hash as in training (default val)",
    )
    ev.add_argument("--temperature", type=float, default=None, help="default: the model's")
    ev.add_argument(
        "--chroma-gain",
        type=float,
        default=None,
        help="scale the decoded ab by this (1: the annealed mean as is; default: the model's)",
    )
    ev.add_argument(
        "--flip-average",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average the logits of each image and its mirror (twice the forward cost; "
        "default: as the model's card says)",
    )
    ev.add_argument(
        "--degrade",
        action="store_true",
        help="score the old-print versions of the photos (faded, soft, grain, dust, JPEG 45: "
        "pipeline/imaging/degrade.py OLD_PRINT) against their clean colours",
    )
    ev.add_argument(
        "--film",
        choices=tuple(FILMS),
        default=None,
        help="score the photos as shot on this film: model and gray baseline see its gray "
        "(ortho: blind to red; pan: near luminance; yellow/orange/red: pan behind that "
        "filter, darker skies) instead of Lab's L, against the true colours; with --degrade, "
        "the film's gray is then damaged as an old print (default: Lab's L)",
    )
    ev.add_argument(
        "--hints",
        type=int,
        default=0,
        metavar="N",
        help="give a hint-aware model N colour hints per photo, points of its true colours "
        "(the same for an id on every run), and score it beside its automatic self and the "
        "gray baseline, with its ab error at the points (default 0: none)",
    )
    ev.add_argument(
        "--precision",
        choices=PRECISION_CHOICES,
        default="fp32",
        help="the network's number type, as colorize's --precision (default fp32)",
    )
    ev.set_defaults(func=_evaluate)

    export = sub.add_parser(
        "export",
        parents=[where],
        help="write a colorized archive as image files in the input's folder layout",
        description="Write every ok row of DEST (a colorize output) as an image file under OUT, "
        "at the input's relative path and in its container (JPEG, PNG, TIFF with 16 bits kept; "
        "others as PNG), with its metadata. OUT/_errors.csv lists the rows not exported. "
        "Re-running skips shards already exported and unchanged.",
    )
    export.add_argument("dest", help="a colorize output folder or s3:// prefix")
    export.add_argument("out", help="folder or s3:// prefix for the image files")
    export.add_argument(
        "--quality", type=int, default=95, help="JPEG quality where encoding is needed (95)"
    )
    export.set_defaults(func=_export)

    pack = sub.add_parser("pack", help="pack a folder or prefix of images into Parquet shards")
    pack.add_argument("source", help="folder or s3:// prefix of image files")
    pack.add_argument("dest", help="output folder or s3:// prefix for the Parquet shards")
    pack.add_argument("--shard-size", type=int, default=256, help="images per shard (default 256)")
    pack.add_argument(
        "--s3-endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="S3 endpoint for MinIO/Ceph/R2 (default: AWS_ENDPOINT_URL or AWS)",
    )
    pack.set_defaults(func=_pack)

    demo = sub.add_parser("demo", help="pack and colorize the photos bundled with scikit-image")
    demo.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    from flows.colorize import ConfigError
    from pipeline.archive.shards import SourceError

    args = build_parser().parse_args(argv)
    try:
        sys.exit(args.func(args))
    except (ConfigError, SourceError) as exc:
        print(f"archive-colorize: error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
