#!/usr/bin/env python
"""MP-IQE in the browser: upload or paste a photo, see its quality score, quality level, scene and distortion
probabilities, and where in the picture the model sees the quality drop.

    python examples/app.py --model org/mp-iqe-koniq            # http://127.0.0.1:7860
    MPIQE_MODEL=org/mp-iqe-koniq python examples/app.py         # as a Hugging Face Space runs it

The same file is the `app.py` of the Space in `examples/space/` (README header and requirements there).
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import tempfile

import gradio as gr
import numpy as np
import torch
from PIL import Image, ImageFilter
from transformers import pipeline

from mpiqe_hf import PIPELINE_TASK, MPIQEImageProcessor, MPIQEModel, load_image
from mpiqe_hf.model_sources import check_model_source
from mpiqe_hf.training import run_script
from mpiqe_hf.visualization import render_overlay


CSS = """
#headline, #headline * {color: #fff !important}
#headline {border-radius: 14px; padding: 18px 22px; background: linear-gradient(135deg, #1f1147, #4a1d6b 60%, #8a2d5c);
           color: #fff; min-height: 132px}
#headline .value {font-size: 3.2rem; font-weight: 700; line-height: 1.1}
#headline .scale {opacity: .75; font-size: .95rem}
#headline .level {display: inline-block; margin-top: 8px; padding: 3px 12px; border-radius: 999px; font-weight: 600;
                  background: rgba(255,255,255,.18)}
#headline .empty {opacity: .8; font-size: 1.05rem; padding-top: 30px}
#headline .bar {height: 8px; border-radius: 4px; background: rgba(255,255,255,.2); margin-top: 12px; overflow: hidden}
#headline .fill {height: 100%; background: linear-gradient(90deg, #f9b233, #fcffa4)}
footer {display: none !important}
"""

LEVEL_COLOURS = {"bad": "#d1495b", "poor": "#ed8b3a", "fair": "#e8c547", "good": "#7cc36e", "excellent": "#30a46c"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default=os.environ.get("MPIQE_MODEL"),
        help="Hub repo id or folder of an MP-IQE checkpoint (default: $MPIQE_MODEL)",
    )
    parser.add_argument("--revision", default=os.environ.get("MPIQE_REVISION"), help="Hub revision of the model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("name the checkpoint with --model or the MPIQE_MODEL environment variable")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device {args.device}: not a device; use cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this machine has no CUDA GPU torch can use; use --device cpu")
    return args


def load_scorer(model_name, revision=None, device="cpu"):
    """The model's `image-quality-assessment` pipeline (its own processor, or the default one for its crop size)."""
    model = MPIQEModel.from_pretrained(model_name, revision=revision).to(device).eval()
    processor = MPIQEImageProcessor.from_pretrained_or_default(model_name, model.config, revision=revision)
    return pipeline(PIPELINE_TASK, model=model, image_processor=processor, device=torch.device(device))


def example_images(folder):
    """A few photos shipped with scikit-image, as they are and with a distortion, to try the demo on."""
    from skimage import data

    photos = {
        "coffee.png": Image.fromarray(data.coffee()),
        "cat_blurred_left.png": _blur_left_half(Image.fromarray(data.chelsea())),
        "astronaut_noisy.png": _add_noise(Image.fromarray(data.astronaut()).resize((384, 384))),
        "rocket_jpeg.jpg": Image.fromarray(data.rocket()),
    }
    paths = []
    for name, image in photos.items():
        path = os.path.join(folder, name)
        image.save(path, quality=8) if name.endswith(".jpg") else image.save(path)
        paths.append(path)
    return paths


def _blur_left_half(image):
    half = image.crop((0, 0, image.width // 2, image.height)).filter(ImageFilter.GaussianBlur(6))
    image = image.copy()
    image.paste(half, (0, 0))
    return image


def _add_noise(image):
    array = np.asarray(image, dtype=np.float32) + np.random.default_rng(0).normal(
        0, 28, (image.height, image.width, 3)
    )
    return Image.fromarray(np.clip(array, 0, 255).astype(np.uint8))


def _headline(result, config):
    if result is None:
        return '<div class="empty">Upload or paste a photo and press <b>Score</b>.</div>'
    low, high = sorted((config.mos_min, config.mos_max))
    direction = "higher is better" if config.mos_higher_is_better else "lower is better"
    colour = LEVEL_COLOURS.get(result["quality"], "#888")
    fill = 100 * min(max(result["normalized_score"], 0.0), 1.0)
    return (
        f'<div class="value">{result["score"]:.2f}</div>'
        f'<div class="scale">on the {low:g}–{high:g} scale of the training data, {direction}</div>'
        f'<div class="level" style="background:{colour}">{html.escape(result["quality"])}</div>'
        f'<div class="bar"><div class="fill" style="width:{fill:.1f}%"></div></div>'
    )


def score_upload(scorer, upload, num_crops):
    """
    Scores an upload as the demo shows it: `(headline HTML, score, quality, scene and distortion label dicts, map
    overlay, distortion-window overlay)`. `upload` is the image component's file data (`{"path", "orig_name", ...}`,
    not decoded by Gradio, so that the pipeline's decoder names what is wrong with a bad file). The score averages
    `num_crops` grid crops; the maps come from a second pass over the grid that covers the whole photo.

    Raises:
        `gr.Error`: shown in the page, naming the upload and what is wrong with it.
    """
    if upload is None:
        raise gr.Error("Upload or paste an image first.")
    path = upload.get("path")
    if not path:
        raise gr.Error("The upload arrived without a file: upload or paste the image again.")
    name = upload.get("orig_name") or os.path.basename(path)
    config = scorer.model.config
    num_labels = max(len(config.scene_classes), len(config.distortion_classes), len(config.quality_levels))
    try:
        image = load_image(path)
        result = scorer(image, top_k=num_labels, return_normalized_score=True, num_crops=int(num_crops))
        maps = scorer(image, return_map=True)
    except ValueError as err:
        raise gr.Error(f"Cannot score {name}: {err}") from err
    as_dict = lambda items: {item["label"]: item["score"] for item in items}  # noqa: E731
    coverage = maps["map_coverage"]
    gradcam = render_overlay(image, maps["quality_map"], label="degradation", coverage=coverage)
    windows = None
    if maps.get("distortion_map") is not None:
        label = f"{maps['distortion']} windows"
        windows = render_overlay(image, maps["distortion_map"], label=label, coverage=coverage)
    return (
        _headline(result, config),
        result["score"],
        as_dict(result["quality_scores"]),
        as_dict(result.get("scene_scores", [])),
        as_dict(result.get("distortion_scores", [])),
        gradcam,
        windows,
    )


def build_demo(scorer):
    """The Gradio interface around an `image-quality-assessment` pipeline."""
    config = scorer.model.config

    def score(upload, num_crops):
        return score_upload(scorer, upload, num_crops)

    with gr.Blocks(title="MP-IQE image quality") as demo:
        gr.Markdown(
            "# MP-IQE image quality\n"
            "Blind image quality assessment with multi-modal prompts on a frozen CLIP: a score on the scale of the "
            "data the model was trained on, the quality level, what the scene is, which distortion dominates — and "
            "a map of where the quality drops."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                image = gr.Image(
                    type="pil", sources=["upload", "clipboard"], label="Photo", elem_id="image", height=380
                )
                crops = gr.Slider(
                    1,
                    64,
                    value=scorer.image_processor.num_crops,
                    step=1,
                    label="Crops per image",
                    info="The score averages the crops of a grid over the photo; more crops cover more of it. "
                    "The maps always use a grid that covers the whole photo.",
                    elem_id="crops",
                )
                button = gr.Button("Score", variant="primary", elem_id="score-button")
                gr.Examples(example_images(tempfile.mkdtemp(prefix="mpiqe-examples-")), inputs=image, label="Try one")
            with gr.Column(scale=6):
                headline = gr.HTML(_headline(None, config), elem_id="headline")
                score_value = gr.Number(label="Score, all digits", elem_id="score", interactive=False)
                with gr.Tabs():
                    with gr.Tab("Where quality drops"):
                        gradcam = gr.Image(label="Grad-CAM of the score (paper, Fig. 3)", elem_id="map", type="pil")
                    with gr.Tab("Distortion windows"):
                        windows = gr.Image(label="Eq. 10 window weights of the predicted distortion", type="pil")
                with gr.Row():
                    quality = gr.Label(
                        label="Quality level", num_top_classes=len(config.quality_levels), elem_id="quality"
                    )
                    scene = gr.Label(label="Scene", num_top_classes=3, elem_id="scene")
                    distortion = gr.Label(label="Distortion", num_top_classes=3, elem_id="distortion")
        gr.Markdown(
            f"Model: `{html.escape(str(config.name_or_path or 'in memory'))}`. The maps are merged over a grid of "
            "crops that covers the whole photo; bright = more influence. Quality levels split the normalised score "
            "into five equal bands."
        )
        outputs = [headline, score_value, quality, scene, distortion, gradcam, windows]
        # Not preprocessed: Gradio's own decoding would fail on a bad file with a bare "Error".
        button.click(score, inputs=[image, crops], outputs=outputs, preprocess=False)
        image.upload(score, inputs=[image, crops], outputs=outputs, preprocess=False)
    return demo


def main(argv=None):
    args = parse_args(argv)
    check_model_source(args.model, "the model", revision=args.revision)
    demo = build_demo(load_scorer(args.model, args.revision, args.device))
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        theme=gr.themes.Soft(primary_hue="violet"),
        css=CSS,
        ssr_mode=False,
        footer_links=[],
    )


if __name__ == "__main__":
    sys.exit(run_script(main, prog="app.py"))
