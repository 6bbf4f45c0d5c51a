"""The demo's web page (Gradio): widgets wired to the functions of :mod:`lmseg.demo.logic`.

Needs the ``demo`` extra (``pip install 'lmseg[demo]'``). The page is served from this machine
only: on 127.0.0.1 unless asked otherwise, no public share link unless asked, Gradio's
telemetry and version check off, and the theme uses the fonts shipped inside Gradio, so neither
the server nor the page reaches the internet.
"""

from __future__ import annotations

import os

# Read by Gradio when a Blocks is built and launched; set before the import so that nothing in
# Gradio starts its telemetry or version check first.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import time  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

from lmseg.demo.logic import (  # noqa: E402
    RANDOM_WEIGHTS_NOTICE,
    DemoError,
    ModelCache,
    Segmentation,
    class_table,
    pixel_info,
    render,
    segment,
)
from lmseg.factory import list_models  # noqa: E402
from lmseg.vocabularies import VOCABULARIES  # noqa: E402

__all__ = ["build_app", "launch", "on_click", "on_hide", "on_segment", "upload_path"]

MODES = ("whole image", "sliding window")
TABLE_HEADERS = ["class", "pixels", "share (%)"]
_TYPED = ""  # the vocabulary choice that means "use the typed classes"


def upload_path(value: Any) -> Any:
    """The image of the Segment event, which runs without Gradio's input preprocessing.

    ``gr.Image`` would open the upload with PIL before the event function runs, so a corrupt
    file failed inside Gradio with PIL's message. Unprocessed, the upload arrives as Gradio's
    file record (already checked to be in Gradio's upload folder); its path goes on to
    :func:`lmseg.io.load_image`, which refuses a bad file with lmseg's message on the page.
    Anything else (a path, array or PIL image from Python) passes through.
    """
    if isinstance(value, dict):
        return value.get("path") or None
    return value


def _status(segmentation: Segmentation, variant: str, mode: str, seconds: float) -> str:
    height, width = segmentation.labels.shape
    lines = [
        f"Segmented {width}×{height} px with **{variant}** ({mode}) into "
        f"{len(segmentation.present())} of {len(segmentation.classes)} classes in {seconds:.2f} s."
    ]
    if segmentation.random_weights:
        lines.append(f"**{RANDOM_WEIGHTS_NOTICE}**")
    lines += [f"Note: {note}" for note in segmentation.notes]
    return "\n\n".join(lines)


def on_segment(
    cache: ModelCache,
    image: Any,
    classes_text: str | None,
    vocabulary: str | None,
    variant: str,
    weights: str | None,
    mode: str,
) -> tuple[Any, list[list[Any]], Any, str, str, Segmentation | None]:
    """The Segment button: ``(overlay, table rows, hide choices, pixel text, status, state)``.

    Takes the widgets' values unprocessed (see :func:`upload_path`); every one is checked
    here. An unusable input leaves the outputs empty and puts its message in the status line.
    """
    start = time.perf_counter()
    try:
        image = upload_path(image)
        if mode not in MODES:
            raise DemoError(f"unknown inference mode {mode!r}; choose one of {', '.join(MODES)}")
        segmentation = segment(
            cache,
            image,
            classes_text=classes_text,
            vocabulary=vocabulary or None,
            variant=variant,
            weights=weights,
            sliding=mode == MODES[1],
        )
    except DemoError as error:
        return None, [], gr.CheckboxGroup(choices=[], value=[]), "", f"**Error:** {error}", None
    seconds = time.perf_counter() - start
    return (
        render(segmentation),
        class_table(segmentation),
        gr.CheckboxGroup(choices=segmentation.present(), value=[]),
        "Click the overlay to see a pixel's class.",
        _status(segmentation, variant, mode, seconds),
        segmentation,
    )


def on_hide(segmentation: Segmentation | None, hidden: list[str] | None) -> Any:
    """The hide checkboxes: the overlay again from the kept labels, without the model."""
    if segmentation is None:
        return None
    return render(segmentation, hidden or [])


def on_click(segmentation: Segmentation | None, event: gr.SelectData) -> str:
    """A click on the overlay: the class of the pixel under it."""
    if segmentation is None:
        return "Segment an image first."
    x, y = (int(v) for v in event.index)
    return pixel_info(segmentation, x, y)


def _header() -> str:
    return (
        "# lmseg: open-vocabulary segmentation\n\n"
        "Upload an image, name the classes to look for (or pick a benchmark vocabulary), "
        "then **Segment**. Every pixel gets one of the classes.\n\n"
        "**Random weights give meaningless outputs.** The tiny variants (`lmseg_tiny`, "
        "`catseg_tiny`), and any variant without a checkpoint, have random weights: their colours "
        "show that the pipeline runs, not what a trained model sees. Give a checkpoint for real "
        "results."
    )


def build_app(
    cache: ModelCache | None = None,
    *,
    model: str = "lmseg_tiny",
    weights: str | None = None,
) -> gr.Blocks:
    """The demo page.

    Args:
        cache: the models kept between requests (a new one by default).
        model: the variant selected when the page opens.
        weights: the checkpoint path filled in when the page opens.
    """
    if model not in list_models():
        raise DemoError(f"unknown model {model!r}; available: {', '.join(list_models())}")
    models = cache or ModelCache()
    vocabularies = [("none: use the typed classes", _TYPED)] + [
        (f"{name}: {text}", name) for name, text in VOCABULARIES.items()
    ]
    with gr.Blocks(title="lmseg demo", analytics_enabled=False) as app:
        state = gr.State(None)
        gr.Markdown(_header(), elem_id="header")
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.Image(
                    label="Image (upload, drop or paste)",
                    type="filepath",
                    sources=["upload", "clipboard"],
                    buttons=["fullscreen"],
                    elem_id="input-image",
                )
                classes = gr.Textbox(
                    label="Classes (comma-separated)",
                    placeholder="cat, sofa, wall, floor",
                    elem_id="classes",
                )
                vocabulary = gr.Dropdown(
                    choices=vocabularies,
                    value=_TYPED,
                    label="Or a shipped vocabulary (leave the classes empty)",
                    elem_id="vocabulary",
                )
                variant = gr.Dropdown(
                    choices=list_models(),
                    value=model,
                    label="Model variant",
                    info="lmseg_tiny and catseg_tiny are small random-weight models; "
                    "`lmseg models` describes every variant",
                    elem_id="variant",
                )
                checkpoint = gr.Textbox(
                    value=weights or "",
                    label="Weights: lmseg .safetensors checkpoint path (empty: random weights)",
                    elem_id="weights",
                )
                mode = gr.Radio(
                    choices=list(MODES), value=MODES[0], label="Inference", elem_id="mode"
                )
                run = gr.Button("Segment", variant="primary", elem_id="segment")
            with gr.Column(scale=1):
                result = gr.Image(
                    label="Overlay (click a pixel to see its class)",
                    type="pil",
                    format="png",  # lossless: the page shows the exact colours
                    interactive=False,
                    buttons=["download", "fullscreen"],
                    elem_id="overlay",
                )
                pixel = gr.Markdown("", elem_id="pixel")
                status = gr.Markdown("", elem_id="status")
                hide = gr.CheckboxGroup(
                    choices=[], label="Hide classes (no model run)", elem_id="hide"
                )
                table = gr.Dataframe(
                    headers=TABLE_HEADERS,
                    datatype=["str", "number", "number"],
                    interactive=False,
                    label="Classes by area",
                    elem_id="class-table",
                )

        def segment_event(*values: Any) -> tuple[Any, ...]:
            return on_segment(models, *values)

        run.click(
            segment_event,
            inputs=[image, classes, vocabulary, variant, checkpoint, mode],
            outputs=[result, table, hide, pixel, status, state],
            preprocess=False,  # see upload_path
        )
        hide.input(on_hide, inputs=[state, hide], outputs=result)
        result.select(on_click, inputs=state, outputs=pixel)
    return app


def launch(
    app: gr.Blocks,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    block: bool = True,
) -> str:
    """Serve the page; returns its local address (with ``block=False``, once it answers).

    Args:
        app: from :func:`build_app`.
        host: the address to listen on (127.0.0.1: this machine only).
        port: the port.
        share: ask Gradio for a public link (reaches the internet; off by default).
        block: serve until interrupted; False returns at once (tests, scripts).
    """
    _, local_url, _ = app.launch(
        server_name=host,
        server_port=port,
        share=share,
        inbrowser=False,
        show_error=True,
        prevent_thread_lock=not block,
        quiet=not block,
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        enable_monitoring=False,
        run_history=False,
        footer_links=["api", "settings"],
    )
    return str(local_url)
