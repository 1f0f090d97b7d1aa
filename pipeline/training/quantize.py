"""A model's int8 twin (issue 31), built by `archive-colorize quantize MODEL PHOTO_DIR`: the
OpenVINO IR of its no-hint network quantized after training by nncf, written beside the
checkpoint as `NAME.int8.xml/.bin` with its card `NAME.int8.json` (what `--precision int8`
runs: pipeline/colorize/int8.py).

The recipe, as the shipped default's twin was made:
- the network as `Colorizer.logits` runs it without hints (a hint-aware net: its automatic
  path, what its hint branches read from no hints folded in as constants), on centred L at the
  model's working size, exported by torch's TorchScript ONNX exporter (opset 17, a dynamic
  batch axis) and converted to OpenVINO; checked against torch in fp32 before quantizing;
- nncf's post-training quantization, default preset, its statistics over every calibration
  photo (`subset_size` = their number); saved with fp32 constants (no fp16 compression);
- calibration photos chosen from PHOTO_DIR by a fixed rule (`photo_order`): the sorted
  relative paths of its photos (`PHOTO_SUFFIXES`, any depth) dealt round-robin over its top
  folders, so that a corpus of many sources is balanced; the first `count` that decode
  calibrate, the next `check` that decode are held out to check the twin. Each is read as a
  run reads it (`images.decode_image`, `predict.working_batch`); one that does not decode is
  skipped and named in the card;
- the check: the twin, run as a worker runs it (`Int8Forward`), against the fp32 network on
  the held-out photos, both decoded by the model's annealed mean: ab error p50/p95/p99 and the
  chroma ratio (what `--precision auto` reads when the card has no `evaluate` figures).

The card keeps the keys of the shipped twin's and names photos by relative path only; the
corpus by the command that makes it, when given (`corpus`), never by its path on a machine.
The three files are written under temporary names and moved into place, the card last (a twin
without its card is not one: `int8.check_twin`)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import models
from models import Colorizer
from pipeline.colorize.int8 import Int8Forward, twin_paths
from pipeline.colorize.predict import working_batch
from pipeline.imaging.images import ImageError, decode_image

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp")
DEFAULT_CALIBRATION = 64  # photos, as the shipped default's twin
DEFAULT_CHECK = 16  # held-out photos the twin is checked on against fp32
MIN_CALIBRATION = 4  # fewer photos than this give no statistics worth the name
OPSET = 17
EXPORT_TOLERANCE = 1e-3  # the fp32 IR's largest logit difference from torch's, before int8
RULE = (
    "sorted relative paths of the {suffixes} files under the photo folder (any depth), dealt "
    "round-robin over its top folders (sorted; files at the top count as one folder); the "
    "first {count} that decode calibrate, the next {check} that decode check the twin; one "
    "that does not decode is skipped and named"
)
INSTALL = "pip install 'archive-colorize[quantize]'"


class QuantizeUnavailable(ImportError):
    """nncf (or onnx) is not installed: the `quantize` extra."""


@dataclass
class PhotoSet:
    """Photos read for the twin: their relative paths, their L at working size, the files'
    digests, and those skipped with why."""

    names: list[str] = field(default_factory=list)
    lightness: list[Any] = field(default_factory=list)  # full-size L maps (H, W)
    digests: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def photo_order(photo_dir: str | Path) -> list[str]:
    """PHOTO_DIR's photos (relative POSIX paths) in the order the twin takes them: sorted,
    then dealt round-robin over the top folders (in sorted order)."""
    root = Path(photo_dir)
    names = sorted(
        (Path(folder) / file).relative_to(root).as_posix()
        for folder, _, files in os.walk(root, followlinks=True)  # a folder of links counts
        for file in files
        if Path(file).suffix.lower() in PHOTO_SUFFIXES
    )
    folders: dict[str, list[str]] = {}
    for name in names:
        folders.setdefault(name.split("/")[0] if "/" in name else "", []).append(name)
    queues = [folders[key] for key in sorted(folders)]
    depth = max((len(queue) for queue in queues), default=0)
    return [queue[i] for i in range(depth) for queue in queues if i < len(queue)]


def read_photos(root: Path, names: list[str], wanted: int, start: int = 0) -> tuple[PhotoSet, int]:
    """The first `wanted` photos of `names[start:]` that decode, and the index after the last
    one looked at. A photo that does not decode (or cannot be read) is skipped and named."""
    photos = PhotoSet()
    i = start
    while i < len(names) and len(photos.names) < wanted:
        name = names[i]
        i += 1
        try:
            data = (root / name).read_bytes()
            lightness = decode_image(data).lightness
        except (ImageError, OSError) as exc:
            photos.skipped.append({"photo": name, "error": str(exc)})
            continue
        photos.names.append(name)
        photos.lightness.append(lightness)
        photos.digests.append(hashlib.sha256(data).hexdigest())
    return photos, i


def skipped_line(skipped: list[dict[str, str]], most: int = 5) -> str:
    """The skipped photos, for a message: the first `most` with why, then how many more."""
    if not skipped:
        return "none"
    named = "; ".join(f"{s['photo']} ({s['error']})" for s in skipped[:most])
    more = len(skipped) - most
    return named + (f"; and {more} more" if more > 0 else "")


class AutomaticNet(nn.Module):
    """The model's network on centred L (N, 1, S, S) -> logits (N, Q, S/4, S/4), as
    `Colorizer.net_logits` runs it without hints and without mirroring (the twin's runtime
    mirrors for a flip-averaging model, `Int8Forward`)."""

    def __init__(self, model: Colorizer) -> None:
        super().__init__()
        self.net = model.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)  # a hint-aware net: hints None, its automatic path
        return out


def ab_vs_fp32(model: Colorizer, lightness: torch.Tensor, int8: torch.Tensor) -> dict[str, float]:
    """The twin's logits against the fp32 network's on the same L, after the model's decoding
    (annealed mean, chroma gain): ab error per output pixel (p50, p95, p99) and the ratio of
    the mean chroma (int8 / fp32)."""
    with torch.inference_mode():
        fp32_ab = model.decode(model.logits(lightness), lightness)[0]
        int8_ab = model.decode(int8, lightness)[0]
    error = (int8_ab - fp32_ab).norm(dim=1).flatten()
    return {
        "ab_p50": float(error.quantile(0.5)),
        "ab_p95": float(error.quantile(0.95)),
        "ab_p99": float(error.quantile(0.99)),
        "chroma_ratio": float(int8_ab.norm(dim=1).mean() / fp32_ab.norm(dim=1).mean()),
    }


def load_quantizer() -> tuple[Any, Any]:
    """nncf and openvino, or QuantizeUnavailable saying how to install them."""
    try:
        import nncf
        import onnx  # noqa: F401 - torch.onnx.export writes through it
        import openvino as ov
    except ImportError as exc:
        raise QuantizeUnavailable(
            f"building an int8 twin needs nncf and onnx ({exc.name} is missing): {INSTALL}"
        ) from exc
    return nncf, ov


def export_ir(model: Colorizer, sample: torch.Tensor, folder: Path) -> Any:
    """The no-hint network as an fp32 OpenVINO model (via ONNX in `folder`), checked against
    torch on `sample` (centred L)."""
    import openvino as ov

    wrapper = AutomaticNet(model).eval()
    with torch.no_grad():
        expected = wrapper(sample)  # (also makes a hint-aware net's no-hint constants)
        onnx_path = folder / "net.onnx"
        with warnings.catch_warnings():  # the exporter's notes on the trace and its future
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapper,
                (sample[:1],),
                str(onnx_path),
                input_names=["x"],
                output_names=["logits"],
                dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
                opset_version=OPSET,
                dynamo=False,
            )
    ir = ov.convert_model(str(onnx_path))
    compiled = ov.Core().compile_model(ir, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = torch.from_numpy(compiled(sample.contiguous().numpy())[0].copy())
    diff = float((got - expected).abs().max())
    if not diff <= EXPORT_TOLERANCE:
        raise RuntimeError(
            f"the exported {model.arch} network disagrees with torch's in fp32 (largest logit "
            f"difference {diff:.3g} > {EXPORT_TOLERANCE}): its forward does not trace"
        )
    return ir


def build_int8_twin(
    model_path: str | Path,
    photo_dir: str | Path,
    count: int = DEFAULT_CALIBRATION,
    check: int = DEFAULT_CHECK,
    corpus: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Quantize the checkpoint at `model_path` on `count` photos of `photo_dir` into its int8
    twin beside it (`int8.twin_paths`), check it on up to `check` other photos, and return its
    card (also written). `corpus`: how `photo_dir` is made, for the card (its path is never
    recorded). ValueError for a photo folder too poor to calibrate on; QuantizeUnavailable
    without nncf."""
    say = progress or (lambda _message: None)
    model_path = models.DEFAULT_MODEL if str(model_path) == "default" else Path(model_path)
    root = Path(photo_dir)
    suffixes = " ".join(PHOTO_SUFFIXES)
    if count < MIN_CALIBRATION:
        raise ValueError(
            f"calibration photos (--photos): at least {MIN_CALIBRATION}, got {count} (the "
            f"shipped twin used {DEFAULT_CALIBRATION})"
        )
    if check < 0:
        raise ValueError(f"check photos (--check): 0 or more, got {check}")
    if not model_path.is_file():
        raise ValueError(
            f"no model checkpoint at {model_path}: give a .safetensors file written by "
            "`archive-colorize train` (or models.save), or 'default'"
        )
    if not root.is_dir():
        raise ValueError(f"no photo folder at {root}: give a folder of photos to calibrate on")
    order = photo_order(root)
    if not order:
        raise ValueError(
            f"{root} holds no photos ({suffixes} files, at any depth): give a folder of photos "
            "like those the model will colour"
        )
    nncf, ov = load_quantizer()
    start = time.monotonic()
    try:
        model = models.load(model_path).eval()
    except Exception as exc:  # not a checkpoint: safetensors' own errors, a card missing
        raise ValueError(f"{model_path} is not a checkpoint models.load reads: {exc}") from exc
    say(f"{len(order)} photos under {root.name}/; reading the first {count} that decode")
    calibration, after = read_photos(root, order, count)
    if len(calibration.names) < MIN_CALIBRATION:
        raise ValueError(
            f"{root} has {len(calibration.names)} photos that decode ({len(order)} {suffixes} "
            f"files; skipped: {skipped_line(calibration.skipped)}): calibrating needs at least "
            f"{MIN_CALIBRATION}; give a folder of photos like those the model will colour"
        )
    held_out, _ = read_photos(root, order, check, after)
    size = model.working_size
    cpu = torch.device("cpu")
    calib_l = working_batch(calibration.lightness, size, cpu).float().contiguous()
    calib_x = ((calib_l - model.l_center) / model.l_scale).contiguous()

    xml, card_path = twin_paths(model_path)
    work = Path(tempfile.mkdtemp(prefix=f".{xml.stem}-", dir=xml.parent))
    try:
        say(f"exporting the {model.arch} network (no hints, {size}x{size}) to OpenVINO")
        built = time.monotonic()
        ir = export_ir(model, calib_x[:2], work)
        say(f"quantizing to int8 on {len(calibration.names)} photos (nncf)")
        dataset = nncf.Dataset([calib_x[i : i + 1].numpy() for i in range(len(calib_x))])
        quantized = nncf.quantize(ir, dataset, subset_size=len(calib_x))
        work_xml = work / xml.name
        ov.save_model(quantized, str(work_xml), compress_to_fp16=False)
        build_seconds = time.monotonic() - built
        work_card = work / card_path.name
        card: dict[str, Any] = {
            "what": "int8 twin of the model's no-hint network (OpenVINO IR, nncf PTQ, "
            "default preset)",
            "source_model": {
                "file": model_path.name,
                "sha256": models.file_sha256(model_path),
                "arch": model.arch,
            },
            "ir": {
                "xml_sha256": models.file_sha256(work_xml),
                "bin_sha256": models.file_sha256(work_xml.with_suffix(".bin")),
                "export": f"torch.onnx.export (TorchScript exporter), opset {OPSET}, dynamic "
                "batch -> openvino.convert_model",
            },
            "working_size": size,
            "calibration": {
                "photos": calibration.names,
                "count": len(calibration.names),
                "asked": count,
                "skipped": calibration.skipped,
                "sha256_of_file_digests": hashlib.sha256(
                    "".join(calibration.digests).encode()
                ).hexdigest(),
                "corpus_command": corpus,
                "photo_dir": root.resolve().name,
                "rule": RULE.format(suffixes=" ".join(PHOTO_SUFFIXES), count=count, check=check),
            },
            "check": {"photos": held_out.names, "count": len(held_out.names)},
            "versions": {
                "openvino": ov.__version__,
                "nncf": nncf.__version__,
                "torch": torch.__version__,
            },
            "build_seconds": round(build_seconds, 1),
        }
        if held_out.skipped:
            card["check"]["skipped"] = held_out.skipped
        work_card.write_text(json.dumps(card, indent=1) + "\n")
        if held_out.names:
            say(f"checking the twin against fp32 on {len(held_out.names)} held-out photos")
            check_l = working_batch(held_out.lightness, size, cpu).float().contiguous()
            # the twin as a worker loads it, from the work folder (a link to the checkpoint
            # there: `check_twin` matches the twin's card to the weights)
            (work / model_path.name).symlink_to(model_path.resolve())
            twin = Int8Forward(work / model_path.name, model)
            with torch.inference_mode():
                int8_logits = twin.logits(check_l)
            card["check"]["vs_fp32"] = ab_vs_fp32(model, check_l, int8_logits)
            del twin
        else:
            card["check"]["note"] = (
                "no photo was left for the check once calibration took its own: give the "
                "folder more photos than --photos"
            )
        card["seconds"] = round(time.monotonic() - start, 1)
        work_card.write_text(json.dumps(card, indent=1) + "\n")
        card_path.unlink(missing_ok=True)  # an old twin stops being one while the files move
        for name in (xml.name, xml.with_suffix(".bin").name, card_path.name):
            (work / name).replace(xml.parent / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"wrote {xml.name}, {xml.with_suffix('.bin').name}, {card_path.name}")
    return card
