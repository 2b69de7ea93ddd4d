"""``unimask demo --web``: a Gradio app to try a unified model in the browser (extra ``demo``).

    unimask demo --web                          # the embedded default model on http://127.0.0.1:7860
    unimask demo --web --model DIR --port 8080 --max-file-size 5mb

One tab per task: understanding, text-to-image (thinking on or off), editing (one or several reference
images), interleaved text and images, and chat. Every tab starts filled with a Shapes World sample (what
the default model was trained on). Sampler and decoder options sit in one "Advanced options" panel shared
by the tabs (a blank field keeps the checkpoint's default). While an image is generated the tab streams
live previews: the pipelines' ``callback_on_step_end`` hands over ``preview()``, a cheap decode of the
current token grids, and the tab's handler is a generator that yields each preview as it arrives. Under
every result the sampling statistics are shown (time, forward passes per stage, the full dictionary).

Safety: the server binds 127.0.0.1 unless ``--host`` says otherwise, uploads are capped (Gradio's
``max_file_size``), and one model call runs at a time.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any, Callable, Iterator

import torch

from unimask.demo import DEMO_MAX_THINKING_LENGTH, demo_samples, image_data_uri

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_FILE_SIZE = "10mb"
# Generated images are tiny (128 px or less); they are shown enlarged.
DISPLAY_PIXELS = 256
# Small generated images fill their box without smoothing (tiny pixel grids stay readable).
PIXEL_CSS = ".pixel-image img { width: 100%; height: 100%; object-fit: contain; image-rendering: pixelated; }"
# The longest a handler waits for the pipeline's next event before it gives up (a hung model call).
EVENT_TIMEOUT_S = 600.0
# Sampler options of the advanced panel: (pipeline option name, label, int?)
SAMPLER_FIELDS: tuple[tuple[str, str, bool], ...] = (
    ("num_inference_steps", "sampler steps per block", True),
    ("block_length", "block length (tokens)", True),
    ("threshold", "confidence threshold (0-1)", False),
    ("temperature", "temperature", False),
    ("guidance_scale", "guidance scale (text-to-image, interleaved)", False),
    ("text_guidance_scale", "text guidance scale (editing)", False),
    ("image_guidance_scale", "image guidance scale (editing)", False),
    ("gen_length", "answer length (tokens)", True),
    ("decoder_steps", "decoder steps", True),
)
DECODER_CHOICES = ("checkpoint default", "turbo", "normal")


def pipeline_options(values: dict[str, Any]) -> dict[str, Any]:
    """The pipeline keyword options of the advanced panel's ``values`` ({option name: UI value}).

    Blank fields (None or "") and ``decoder="checkpoint default"`` are dropped, so the checkpoint's
    defaults apply; whole-number options are cast to int. Raises ``ValueError`` naming an option whose
    value is not a number (the pipeline itself checks the ranges)."""
    integer = {name for name, _, is_int in SAMPLER_FIELDS if is_int} | {"thinking_length"}
    options: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or value == "" or (name == "decoder" and value == DECODER_CHOICES[0]):
            continue
        if name == "decoder":
            options[name] = value
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={value!r} must be a number") from None
        if name in integer:
            if number != int(number):
                raise ValueError(f"{name}={value!r} must be a whole number")
            options[name] = int(number)
        else:
            options[name] = number
    return options


def stats_markdown(stats: dict[str, Any]) -> str:
    """One line of Markdown for a pipeline output's ``stats``: total time and forward passes per stage."""
    passes = ", ".join(f"{stage} {count}" for stage, count in stats.get("nfe", {}).items()) or "none"
    seconds = stats.get("total_time_s")
    timing = f"{seconds:.2f} s" if isinstance(seconds, (int, float)) else "?"
    return f"**time** {timing} · **forward passes** {passes}"


def json_safe(stats: dict[str, Any]) -> dict[str, Any]:
    """``stats`` with every value JSON-serialisable (unknown objects become their ``str``)."""
    return json.loads(json.dumps(stats, default=str))


def interleaved_html(parts: list[Any]) -> str:
    """Ordered text (str) and PIL image parts as HTML (images inline as PNG data URIs)."""
    from html import escape

    pieces = []
    for number, part in enumerate(parts):
        if isinstance(part, str):
            pieces.append(f'<p class="unimask-text">{escape(part)}</p>')
        else:
            pieces.append(
                f'<img src="{image_data_uri(part)}" alt="output image {number}" width="{DISPLAY_PIXELS}" '
                f'height="{DISPLAY_PIXELS}" style="image-rendering: pixelated">'
            )
    return "\n".join(pieces) or "<p>(empty output)</p>"


def message_text(content: Any) -> str:
    """The text of a Gradio chat message ``content``: a string, a {"text"} dict or a list of them."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, (list, tuple)):
        return "".join(message_text(item) for item in content)
    return ""


def gallery_images(value: Any) -> list[Any]:
    """PIL images of a Gradio gallery input (a list of images or of (image, caption) tuples)."""
    from PIL import Image

    images = []
    for item in value or []:
        image = item[0] if isinstance(item, (tuple, list)) else item
        if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
            image = Image.open(image)
        images.append(image.convert("RGB"))
    return images


class PipelineRunner:
    """Runs pipeline calls one at a time in a worker thread and streams their step previews.

    pipe: a `UniPipeline`. `stream(call, preview_every)` yields ``("preview", PIL image, label)`` while
    an image is sampled (every ``preview_every``-th step) and finally ``("done", output, None)``;
    a ``ValueError`` of the call is re-raised in the caller's thread.
    """

    def __init__(self, pipe: Any):
        self.pipe = pipe
        self.lock = threading.Lock()

    def stream(self, call: Callable[[Callable], Any], preview_every: int = 1) -> Iterator[tuple[str, Any, Any]]:
        """call: ``call(callback_on_step_end) -> UniPipelineOutput``. preview_every: >= 1."""
        if int(preview_every) < 1:
            raise ValueError(f"preview_every={preview_every!r} must be >= 1")
        events: queue.Queue = queue.Queue()
        counter = {"steps": 0}

        def on_step(pipe: Any, step: int, block: int, kwargs: dict[str, Any]) -> None:
            counter["steps"] += 1
            if not kwargs["token_grids"] or counter["steps"] % int(preview_every):
                return
            images = kwargs["preview"]()
            if images:
                events.put(("preview", images[0], f"{kwargs['stage']}: block {block}, step {step + 1}"))

        def work() -> None:
            with self.lock:
                try:
                    events.put(("done", call(on_step), None))
                except Exception as error:  # handed to the caller's thread, which re-raises it
                    events.put(("error", error, None))

        worker = threading.Thread(target=work, name="unimask-web-call", daemon=True)
        worker.start()
        try:
            while True:
                kind, payload, label = events.get(timeout=EVENT_TIMEOUT_S)
                if kind == "error":
                    raise payload
                yield kind, payload, label
                if kind == "done":
                    return
        finally:
            worker.join(timeout=EVENT_TIMEOUT_S)


def build_app(pipe: Any, model_name: str = "shapes-default", seed: int = 0) -> Any:
    """The Gradio ``Blocks`` app for ``pipe`` (a `UniPipeline`).

    model_name: shown in the header. seed: draws the Shapes World samples the tabs start with and is the
    default sampling seed. Returns a ``gradio.Blocks`` (not launched; see `launch_app`).
    """
    import gradio as gr

    from unimask.shapes.evaluate import sample_prompt
    from unimask.shapes.render import render

    runner = PipelineRunner(pipe)
    samples = demo_samples(seed)
    device = pipe._execution_device

    def generator_for(seed_value: Any) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(int(seed_value or 0))

    with gr.Blocks(title="unimask demo", analytics_enabled=False) as app:
        gr.Markdown(f"# unimask demo\nmodel: `{model_name}` · one model call runs at a time")
        with gr.Accordion("Advanced options (blank = checkpoint default)", open=False, elem_id="advanced"):
            with gr.Row():
                seed_box = gr.Number(value=seed, precision=0, label="seed", elem_id="opt-seed")
                preview_every = gr.Slider(1, 32, value=1, step=1, label="preview every n steps")
                decoder_choice = gr.Radio(list(DECODER_CHOICES), value=DECODER_CHOICES[0], label="image decoder")
                thinking_length = gr.Number(
                    value=DEMO_MAX_THINKING_LENGTH, precision=0, label="thinking length (tokens)"
                )
            with gr.Row():
                # Text boxes, not number fields: a blank number field would show and send 0, not "default".
                sampler_boxes = [
                    gr.Textbox(value="", label=label, placeholder="checkpoint default", elem_id=f"opt-{name}",
                               min_width=120)
                    for name, label, _ in SAMPLER_FIELDS
                ]
        advanced = [seed_box, preview_every, decoder_choice, thinking_length, *sampler_boxes]

        def read_advanced(values: tuple) -> tuple[torch.Generator, int, dict[str, Any]]:
            seed_value, every, decoder, thinking, *numbers = values
            raw = {"decoder": decoder, "thinking_length": thinking}
            raw.update({name: value for (name, _, _), value in zip(SAMPLER_FIELDS, numbers)})
            try:
                options = pipeline_options(raw)
            except ValueError as error:
                raise gr.Error(str(error)) from error
            return generator_for(seed_value), int(every or 1), options

        def run_streaming(call: Callable[[Callable], Any], every: int) -> Iterator[tuple[str, Any, Any]]:
            try:
                yield from runner.stream(call, every)
            except ValueError as error:
                raise gr.Error(str(error)) from error

        def image_tab_outputs(prefix: str) -> tuple[Any, Any, Any, Any]:
            with gr.Row():
                preview = gr.Image(label="live preview", type="pil", format="png", height=DISPLAY_PIXELS,
                                   interactive=False, elem_id=f"{prefix}-preview", elem_classes=["pixel-image"])
                result = gr.Image(label="result", type="pil", format="png", height=DISPLAY_PIXELS,
                                  interactive=False, elem_id=f"{prefix}-result", elem_classes=["pixel-image"])
            stats_line = gr.Markdown(elem_id=f"{prefix}-stats")
            with gr.Accordion("all statistics", open=False):
                stats_json = gr.JSON()
            return preview, result, stats_line, stats_json

        with gr.Tabs():
            # ------------------------------------------------------------------ understanding
            with gr.Tab("Understanding", id="understanding"):
                sample = samples["understanding"]
                with gr.Row():
                    u_image = gr.Image(value=render(sample["images"][0]), type="pil", label="image", height=DISPLAY_PIXELS,
                                       sources=["upload", "clipboard"], format="png", elem_classes=["pixel-image"],
                                       elem_id="understanding-image")
                    with gr.Column():
                        u_question = gr.Textbox(value=sample_prompt(sample), label="question", elem_id="understanding-question")
                        u_button = gr.Button("Answer", variant="primary", elem_id="understanding-run")
                        u_answer = gr.Textbox(label="answer", interactive=False, elem_id="understanding-answer")
                u_stats = gr.Markdown(elem_id="understanding-stats")
                with gr.Accordion("all statistics", open=False):
                    u_json = gr.JSON()

                def understand(image, question, *values):
                    if image is None:
                        raise gr.Error("image: upload an image to ask about")
                    generator, every, options = read_advanced(values)
                    call = lambda cb: pipe.understanding(question, [image], generator=generator,
                                                         callback_on_step_end=cb, **options)
                    for kind, payload, _ in run_streaming(call, every):
                        if kind == "done":
                            yield payload.texts[0] or "", stats_markdown(payload.stats), json_safe(payload.stats)

                u_button.click(understand, [u_image, u_question, *advanced], [u_answer, u_stats, u_json],
                               concurrency_id="model")

            # ------------------------------------------------------------------ text to image
            with gr.Tab("Text to image", id="text_to_image"):
                t_prompt = gr.Textbox(value=sample_prompt(samples["text_to_image"]), label="prompt", lines=2,
                                      elem_id="t2i-prompt")
                with gr.Row():
                    t_thinking = gr.Checkbox(value=False, label="thinking (reason in text first)", elem_id="t2i-thinking")
                    t_button = gr.Button("Generate", variant="primary", elem_id="t2i-run")
                t_thought = gr.Textbox(label="thinking text", interactive=False)
                t_preview, t_result, t_stats, t_json = image_tab_outputs("t2i")

                def text_to_image(prompt, thinking, *values):
                    generator, every, options = read_advanced(values)
                    if not thinking:
                        options.pop("thinking_length", None)
                    call = lambda cb: pipe.text_to_image(prompt, thinking=bool(thinking), generator=generator,
                                                         callback_on_step_end=cb, **options)
                    for kind, payload, label in run_streaming(call, every):
                        if kind == "preview":
                            yield gr.update(value=payload, label=f"live preview ({label})"), None, "", "generating…", None
                        else:
                            yield (gr.update(label="live preview"), payload.images[0][0], payload.texts[0] or "",
                                   stats_markdown(payload.stats), json_safe(payload.stats))

                t_button.click(text_to_image, [t_prompt, t_thinking, *advanced],
                               [t_preview, t_result, t_thought, t_stats, t_json], concurrency_id="model")

            # ------------------------------------------------------------------ editing
            with gr.Tab("Editing", id="editing"):
                edit_sample = samples["multi_reference_editing"]
                e_refs = gr.Gallery(value=[render(scene) for scene in edit_sample["images"]], type="pil",
                                    label="reference images (one to edit, several to compose)", columns=4,
                                    height=DISPLAY_PIXELS, interactive=True, format="png", object_fit="contain",
                                    elem_id="edit-references")
                e_prompt = gr.Textbox(value=sample_prompt(edit_sample), label="instruction", elem_id="edit-prompt")
                e_button = gr.Button("Edit", variant="primary", elem_id="edit-run")
                e_preview, e_result, e_stats, e_json = image_tab_outputs("edit")

                def edit(references, instruction, *values):
                    images = gallery_images(references)
                    if not images:
                        raise gr.Error("image: add at least one reference image")
                    generator, every, options = read_advanced(values)
                    call = lambda cb: pipe.edit(instruction, images, generator=generator,
                                                callback_on_step_end=cb, **options)
                    for kind, payload, label in run_streaming(call, every):
                        if kind == "preview":
                            yield gr.update(value=payload, label=f"live preview ({label})"), None, "generating…", None
                        else:
                            yield (gr.update(label="live preview"), payload.images[0][0],
                                   stats_markdown(payload.stats), json_safe(payload.stats))

                e_button.click(edit, [e_refs, e_prompt, *advanced], [e_preview, e_result, e_stats, e_json],
                               concurrency_id="model")

            # ------------------------------------------------------------------ interleaved
            with gr.Tab("Interleaved", id="interleaved"):
                i_prompt = gr.Textbox(value=sample_prompt(samples["interleaved"]), label="prompt", lines=2,
                                      elem_id="interleaved-prompt")
                i_button = gr.Button("Generate", variant="primary", elem_id="interleaved-run")
                with gr.Row():
                    i_preview = gr.Image(label="live preview", type="pil", format="png", height=DISPLAY_PIXELS,
                                         interactive=False, scale=1, elem_id="interleaved-preview",
                                         elem_classes=["pixel-image"])
                    i_output = gr.HTML(label="output", elem_id="interleaved-output")
                i_stats = gr.Markdown(elem_id="interleaved-stats")
                with gr.Accordion("all statistics", open=False):
                    i_json = gr.JSON()

                def interleave(prompt, *values):
                    generator, every, options = read_advanced(values)
                    call = lambda cb: pipe.interleaved(prompt, generator=generator, callback_on_step_end=cb, **options)
                    for kind, payload, label in run_streaming(call, every):
                        if kind == "preview":
                            yield gr.update(value=payload, label=f"live preview ({label})"), gr.update(), "generating…", None
                        else:
                            yield (gr.update(label="live preview"), interleaved_html(payload.parts[0]),
                                   stats_markdown(payload.stats), json_safe(payload.stats))

                i_button.click(interleave, [i_prompt, *advanced], [i_preview, i_output, i_stats, i_json],
                               concurrency_id="model")

            # ------------------------------------------------------------------ chat
            with gr.Tab("Chat", id="chat"):
                c_history = gr.Chatbot(label="conversation", height=320, elem_id="chat-history")
                with gr.Row():
                    c_message = gr.Textbox(value=samples["chat"]["prompt"], label="message", scale=4,
                                           elem_id="chat-message")
                    c_button = gr.Button("Send", variant="primary", scale=1, elem_id="chat-run")
                c_stats = gr.Markdown(elem_id="chat-stats")

                def chat(message, history, *values):
                    if not str(message or "").strip():
                        raise gr.Error("message: type a message first")
                    generator, every, options = read_advanced(values)
                    turns = [{"role": m["role"], "content": message_text(m["content"])} for m in history or []]
                    turns.append({"role": "user", "content": message})
                    call = lambda cb: pipe.chat(messages=turns, generator=generator, callback_on_step_end=cb, **options)
                    for kind, payload, _ in run_streaming(call, every):
                        if kind == "done":
                            reply = {"role": "assistant", "content": payload.texts[0] or ""}
                            yield [*turns, reply], "", stats_markdown(payload.stats)

                c_button.click(chat, [c_message, c_history, *advanced], [c_history, c_message, c_stats],
                               concurrency_id="model")
    app.queue(default_concurrency_limit=1)
    return app


def launch_app(
    app: Any,
    host: str = DEFAULT_HOST,
    port: int | None = DEFAULT_PORT,
    max_file_size: str | int = DEFAULT_MAX_FILE_SIZE,
    block: bool = True,
) -> str:
    """Serve ``app`` (from `build_app`) and return its local URL.

    host: interface to bind (127.0.0.1 by default: reachable from this machine only). port: None picks a
    free one. max_file_size: the upload cap, bytes or "<n>kb" / "<n>mb" / "<n>gb" (larger uploads get
    HTTP 413). block: serve until interrupted; False returns at once (the server runs in a thread; stop it
    with ``app.close()``)."""
    import gradio as gr

    if not isinstance(host, str) or not host:
        raise ValueError(f"host={host!r} must be a non-empty interface name or address")
    if port is not None and not (isinstance(port, int) and 0 < port < 65536):
        raise ValueError(f"port={port!r} must be an int in [1, 65535] or None")
    # Local fonts only: the default theme would make the browser fetch Google fonts.
    local_fonts = ["ui-sans-serif", "system-ui", "sans-serif"]
    theme = gr.themes.Default(font=local_fonts, font_mono=["ui-monospace", "monospace"])
    _, local_url, _ = app.launch(
        server_name=host,
        server_port=port,
        max_file_size=max_file_size,
        share=False,
        prevent_thread_lock=True,
        quiet=True,
        show_error=True,
        theme=theme,
        css=PIXEL_CSS,
        footer_links=[],
        ssr_mode=False,
    )
    if block:
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            app.close()
    return local_url


def run_web(model: str | None, device: str | None, host: str, port: int, max_file_size: str, seed: int) -> int:
    """Load ``model`` (None: the default model), build the app and serve it until interrupted. Returns 0."""
    from unimask.pipelines.pipeline_uni import UniPipeline

    pipe = UniPipeline.from_pretrained(model or None, device=device)
    pipe.set_progress_bar_config(disable=True)
    app = build_app(pipe, model_name=str(model or "shapes-default"), seed=seed)
    print(f"unimask demo: serving http://{host}:{port} (Ctrl+C stops it)", flush=True)
    launch_app(app, host=host, port=port, max_file_size=max_file_size, block=True)
    return 0
