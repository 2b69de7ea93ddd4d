"""The Gradio web demo without a browser: option parsing, the loopback binding, the upload cap, the
streamed step previews and the handlers' results through Gradio's own client."""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import pytest

from unimask.web_demo import PipelineRunner, interleaved_html, message_text, pipeline_options, stats_markdown

UPLOAD_LIMIT_BYTES = 4096  # the cap the `launched` fixture serves with


def test_pipeline_options_drop_blanks_and_cast_counts():
    options = pipeline_options(
        {"num_inference_steps": 4.0, "threshold": 0.9, "block_length": None, "temperature": "",
         "decoder": "checkpoint default", "thinking_length": 16.0}
    )
    assert options == {"num_inference_steps": 4, "threshold": 0.9, "thinking_length": 16}
    assert isinstance(options["num_inference_steps"], int)
    assert pipeline_options({"decoder": "normal"}) == {"decoder": "normal"}


@pytest.mark.parametrize(("values", "message"), [({"block_length": 2.5}, "block_length=2.5 must be a whole"),
                                                 ({"threshold": "high"}, "threshold='high' must be a number")])
def test_pipeline_options_name_the_bad_option(values, message):
    with pytest.raises(ValueError, match=message):
        pipeline_options(values)


def test_small_formatters():
    assert stats_markdown({"nfe": {"image_tokens": 4, "decoder": 1}, "total_time_s": 0.5}) == (
        "**time** 0.50 s · **forward passes** image_tokens 4, decoder 1"
    )
    assert message_text([{"type": "text", "text": "a"}, {"text": "b"}]) == "ab"
    from PIL import Image

    html = interleaved_html(["one <b>", Image.new("RGB", (4, 4))])
    assert "one &lt;b&gt;" in html and 'src="data:image/png;base64,' in html


def test_runner_streams_previews_before_the_result(web_pipe):
    pipe, _ = web_pipe
    runner = PipelineRunner(pipe)
    events = list(runner.stream(lambda cb: pipe.text_to_image("a red circle", callback_on_step_end=cb), 1))
    kinds = [kind for kind, _, _ in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    previews = [payload for kind, payload, _ in events if kind == "preview"]
    assert previews, "no live preview was streamed while the image was sampled"
    assert all(image.width > 0 and image.height > 0 for image in previews)
    assert events[-1][1].images[0][0].size[0] > 0
    # The same (deterministic) call previewing every second step only.
    fewer = [k for k, _, _ in runner.stream(lambda cb: pipe.text_to_image("a red circle", callback_on_step_end=cb), 2)]
    assert fewer.count("preview") == len(previews) // 2


def test_runner_reraises_the_pipelines_value_error(web_pipe):
    pipe, _ = web_pipe
    with pytest.raises(ValueError, match="num_inference_steps"):
        list(PipelineRunner(pipe).stream(lambda cb: pipe.text_to_image("a", num_inference_steps=0), 1))


def test_app_binds_loopback_only(launched):
    app, url, _ = launched
    assert app.server_name == "127.0.0.1"
    parsed = urlparse(url)
    assert parsed.hostname == "127.0.0.1"
    with socket.create_connection(("127.0.0.1", parsed.port), timeout=5):
        pass
    # The same port on this machine's other address must refuse: the socket is bound to loopback only.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET address: picks the outgoing interface, sends nothing
        own_address = probe.getsockname()[0]
    except OSError:
        own_address = None
    finally:
        probe.close()
    if own_address and not own_address.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((own_address, parsed.port), timeout=5).close()


def test_upload_cap_rejects_larger_files(launched):
    import httpx

    app, url, _ = launched
    assert app.max_file_size == UPLOAD_LIMIT_BYTES
    upload = url.rstrip("/") + "/gradio_api/upload"
    small = httpx.post(upload, files={"files": ("small.png", b"x" * 100, "image/png")}, timeout=30)
    assert small.status_code == 200, small.text
    big = httpx.post(upload, files={"files": ("big.png", b"x" * (UPLOAD_LIMIT_BYTES * 4), "image/png")}, timeout=30)
    assert big.status_code == 413, (big.status_code, big.text)


def test_handlers_through_gradio_client(launched, tmp_path):
    from gradio_client import Client

    app, url, _ = launched
    client = Client(url, verbose=False)
    job = client.submit("a red circle", False, *_advanced_defaults(), api_name="/text_to_image")
    outputs = job.result(timeout=120)
    preview, result, thought, stats_line, stats = outputs
    assert result and "forward passes" in stats_line and stats["nfe"]["image_tokens"] > 0
    updates = job.outputs()
    assert len(updates) >= 2, "the handler yielded no preview before its result"

    from gradio_client import handle_file
    from PIL import Image

    image_path = tmp_path / "square.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image_path)
    answer, answer_stats, _ = client.predict(
        handle_file(str(image_path)), "what color is the shape?", *_advanced_defaults(), api_name="/understand"
    )
    assert isinstance(answer, str) and "forward passes" in answer_stats
    history, cleared, chat_stats = client.predict("hello", [], *_advanced_defaults(), api_name="/chat")
    assert history[-1]["role"] == "assistant" and cleared == "" and "forward passes" in chat_stats


def _advanced_defaults() -> list:
    """seed, preview every, decoder, thinking length, then the blank sampler fields."""
    from unimask.web_demo import DECODER_CHOICES, SAMPLER_FIELDS

    return [0, 1, DECODER_CHOICES[0], 4, *([""] * len(SAMPLER_FIELDS))]


def test_bad_option_is_reported_not_crashing(launched):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    _, url, _ = launched
    values = _advanced_defaults()
    values[4] = "0"  # num_inference_steps = 0
    with pytest.raises(AppError, match="num_inference_steps"):
        Client(url, verbose=False).predict("a", False, *values, api_name="/text_to_image")


def test_cli_web_flag_serves_on_loopback(monkeypatch, tiny_default_dir):
    import unimask.web_demo as web_demo
    from unimask.cli import main

    seen = {}

    def fake_launch(app, host, port, max_file_size, block):
        seen.update(host=host, port=port, max_file_size=max_file_size, block=block, tabs=app is not None)
        return f"http://{host}:{port}/"

    monkeypatch.setattr(web_demo, "launch_app", fake_launch)
    assert main(["demo", "--web", "--port", "7999", "--max-file-size", "2mb"]) == 0
    assert seen == {"host": "127.0.0.1", "port": 7999, "max_file_size": "2mb", "block": True, "tabs": True}
