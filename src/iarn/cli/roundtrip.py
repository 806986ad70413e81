"""`iarn roundtrip` (down and up in memory, PSNR-Y against bicubic) and `iarn compare` (a figure)."""

from __future__ import annotations

from pathlib import Path

from ..files import settle
from .args import (
    MAX_ZOOM,
    effort_flags,
    force_flag,
    load_model,
    lr_format,
    model_flags,
    parse_crop,
    refine_config,
    sample_image_path,
    target_flags,
    zoom_factor,
)
from .batch import check_target, step_progress
from .errors import CliError


def add_parsers(commands) -> None:
    trip = commands.add_parser("roundtrip", help="down- and upscale in memory; print PSNR-Y against bicubic")
    trip.add_argument("input", nargs="?", metavar="IN", help="an image (default: the bundled sample)")
    target_flags(trip)
    trip.add_argument(
        "--lr-format",
        type=lr_format,
        metavar="FMT",
        help="send both LRs through jpeg:Q or webp:Q before their upscale, as a platform would (the model: "
        "the bundled `jpeg` one unless --model or --weights names another)",
    )
    trip.add_argument(
        "--save", metavar="DIR", help="also write lr.png (lr.jpg, lr.webp with --lr-format) and restored.png there"
    )
    force_flag(trip, "the LR and restored.png in --save")
    effort_flags(trip, None)
    model_flags(trip)

    compare = commands.add_parser("compare", help="a figure: one crop as HR / bicubic / iarn / iarn's LR")
    compare.add_argument("input", nargs="?", metavar="IN", help="an image (default: the bundled sample)")
    target_flags(compare)
    compare.add_argument("-o", "--output", required=True, metavar="OUT.png", help="the figure (PNG)")
    compare.add_argument("--crop", type=parse_crop, metavar="X,Y,SIZE", help="HR square (default: most detailed)")
    compare.add_argument(
        "--zoom", type=zoom_factor, default=2, help=f"panel enlargement, 1 to {MAX_ZOOM} (default %(default)s)"
    )
    force_flag(compare, "an existing figure")
    effort_flags(compare, None)
    model_flags(compare)


def run_roundtrip(args) -> int:
    from ..api import resize_alpha
    from ..codec import through_codec
    from ..effort import partial_pass_runs
    from ..evaluate import bicubic_roundtrip, model_roundtrip
    from ..geometry import target_size
    from ..imageio import as_written, read_picture, write_picture
    from ..metrics import protocol_border, psnr_y

    path = Path(args.input) if args.input else sample_image_path()
    codec = args.lr_format
    lr_name = "lr." + {None: "png", "jpeg": "jpg", "webp": "webp"}[codec and codec[0]]
    if args.save:
        folder = Path(args.save)
        if folder.exists() and not folder.is_dir():
            raise CliError(f"--save {folder}: exists and is not a folder")
        for name in (lr_name, "restored.png"):
            check_target(path, folder / name, args.force)
    model = load_model(args, lossy=codec is not None)
    picture = read_picture(path, allow_huge=args.allow_huge)
    hr = picture.rgb
    lr_size = target_size(picture.size, model.config.max_scale, size=args.size, scale=args.scale)
    scale = (hr.shape[0] / lr_size[0], hr.shape[1] / lr_size[1])
    border = protocol_border(scale)
    refine = refine_config(args, model)
    lr, up = model_roundtrip(model, hr, lr_size, args.tile, refine, step_progress(refine.steps), codec)
    # the pictures --save writes, and the scores of exactly what they hold
    lr_picture = picture.with_pixels(lr, resize_alpha(picture.alpha, lr_size))
    restored = picture.with_pixels(up, picture.alpha)
    bic_lr, bic_up = bicubic_roundtrip(hr, lr_size, codec)
    ours, bicubic = psnr_y(as_written(restored), hr, border), psnr_y(bic_up, hr, border)
    lr_fidelity = psnr_y(lr, bic_lr)
    print(
        f"{path.name}: {hr.shape[1]}x{hr.shape[0]} -> {lr_size[1]}x{lr_size[0]} (scale {scale[0]:.3g} x {scale[1]:.3g})"
    )
    corrected = model.correct and model.network.corrector is not None
    trained = model.network.corrector.config.passes if corrected else 1
    shown = model.corrector_passes or trained
    if shown != int(shown) and not partial_pass_runs(model, (hr.shape[0], hr.shape[1]), lr_size):
        shown = int(shown)
    passes = f" in {shown:g} passes" if corrected and trained > 1 else ""
    corrector = "none" if model.network.corrector is None else "on" if corrected else "off"
    spent = f" (effort: corrector {corrector}{passes}, {refine.steps} refinement steps)"
    print(f"  iarn round trip    PSNR-Y {ours:6.2f} dB{spent}")
    print(f"  bicubic round trip PSNR-Y {bicubic:6.2f} dB   (iarn {ours - bicubic:+.2f} dB)")
    print(f"  iarn LR against bicubic LR PSNR-Y {lr_fidelity:.2f} dB")
    if codec is not None:
        sizes = (through_codec(lr, codec)[1], through_codec(bic_lr, codec)[1])
        print(f"  both LRs through {codec[0]}:{codec[1]}: {sizes[0]:,} bytes (iarn), {sizes[1]:,} (bicubic)")
    if args.save:
        folder = Path(args.save)
        lr_path, restored_path = folder / lr_name, folder / "restored.png"
        write_picture(
            lr_picture,
            lr_path,
            hr_size=picture.size,
            model_id=model.model_id,
            overwrite=args.force,
            refine=refine.steps,
            quality=codec and codec[1],
            provisional=not lr_path.exists(),  # both or neither: a rerun must not stop on a lone lr.png
        )
        written = False
        try:
            write_picture(restored, restored_path, overwrite=args.force)
            written = True
        finally:
            settle(lr_path, keep=written)
        print(f"  wrote {lr_path} and {restored_path}")
    return 0


def run_compare(args) -> int:
    import numpy as np

    from ..compare import comparison
    from ..geometry import target_size
    from ..imageio import picture_from_array, read_picture, write_picture

    path = Path(args.input) if args.input else sample_image_path()
    target = Path(args.output)
    if not target.suffix:
        target = target.with_suffix(".png")  # the name checked is the name written
    check_target(path, target, args.force)
    model = load_model(args)
    picture = read_picture(path, allow_huge=args.allow_huge)
    lr_size = target_size(picture.size, model.config.max_scale, size=args.size, scale=args.scale)
    refine = refine_config(args, model)
    figure, scores = comparison(
        model, picture.rgb, lr_size, args.crop, args.zoom, args.tile, refine, step_progress(refine.steps)
    )
    write_picture(picture_from_array(np.asarray(figure)), target, overwrite=args.force)
    print(
        f"{path.name} -> {lr_size[1]}x{lr_size[0]}: PSNR-Y iarn {scores['iarn']:.2f} dB, bicubic "
        f"{scores['bicubic']:.2f} dB (crop: {scores['iarn_crop']:.2f} / {scores['bicubic_crop']:.2f}); "
        f"wrote {target}"
    )
    return 0
