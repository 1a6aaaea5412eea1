"""`mpiqe-export`: writes an MP-IQE checkpoint out for deployment (`mpiqe-export onnx`, see `mpiqe_hf.export_onnx`)."""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mpiqe-export", description="Export an MP-IQE model for deployment.")
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    onnx_parser = formats.add_parser("onnx", help="ONNX graph for onnxruntime (text features folded in)")
    onnx_parser.add_argument(
        "output_dir",
        help=(
            "folder to write model.onnx, config.json and preprocessor_config.json to: new, empty or an earlier "
            "export's (whose files this export replaces; its model_int8.onnx is deleted without --quantize)"
        ),
    )
    onnx_parser.add_argument(
        "--model", "-m", required=True, help="Hub repo id or local folder of an MP-IQE checkpoint"
    )
    onnx_parser.add_argument("--revision", default=None, help="Hub revision of the model")
    onnx_parser.add_argument("--opset", type=int, default=17, help="ONNX opset, 14 to 20 (default 17)")
    onnx_parser.add_argument("--quantize", action="store_true", help="also write model_int8.onnx (dynamic int8)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs `mpiqe-export`; returns the exit status (0 done, 2 bad input: the output folder, or a model that cannot be
    loaded or exported; 130 interrupted)."""
    try:
        return _export(build_parser().parse_args(argv))
    except KeyboardInterrupt:
        print("mpiqe-export: interrupted", file=sys.stderr)
        return 130


def _export(args) -> int:
    from ..export_onnx.exporter import check_opset, foreign_files
    from ..model_sources import ModelSourceUnavailable, check_model_source
    from ..training.script import check_output_folder

    try:
        check_opset(args.opset)
        check_output_folder(args.output_dir, "output_dir")
        # In seconds, and naming a missing local folder: from_pretrained would try the name on the Hub, with retries.
        alternatives = [] if os.path.exists(args.model) else [f"check the path: there is no folder {args.model} here"]
        check_model_source(args.model, "the MP-IQE model (--model)", alternatives, revision=args.revision)
    except (ValueError, ModelSourceUnavailable) as err:
        print(f"mpiqe-export: {err}", file=sys.stderr)
        return 2
    foreign = foreign_files(args.output_dir)
    if foreign:
        print(
            f"mpiqe-export: {args.output_dir} holds files an export does not write ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}): export into a new or empty folder, or an earlier export's folder",
            file=sys.stderr,
        )
        return 2
    from ..export_onnx import export_onnx
    from ..image_processing_mpiqe import MPIQEImageProcessor
    from ..modeling_mpiqe import MPIQEModel

    try:
        model = MPIQEModel.from_pretrained(args.model, revision=args.revision)
    except (OSError, ValueError) as err:
        print(f"mpiqe-export: cannot load the model {args.model!r}: {err}", file=sys.stderr)
        return 2
    try:
        processor = MPIQEImageProcessor.from_pretrained(args.model, revision=args.revision)
    except OSError:
        processor = None
    try:
        result = export_onnx(
            model, args.output_dir, image_processor=processor, opset=args.opset, quantize=args.quantize
        )
    except (ImportError, OSError, RuntimeError) as err:
        print(f"mpiqe-export: {err}", file=sys.stderr)
        return 2
    print(f"wrote {result['onnx']} (onnxruntime vs torch: max score difference {result['max_abs_diff']:.2e})")
    if "onnx_int8" in result:
        print(f"wrote {result['onnx_int8']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
