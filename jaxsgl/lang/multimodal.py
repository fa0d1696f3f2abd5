"""`sgl.image(...)` / `sgl.video(...)`: OpenAI-format message parts (base64 data URLs).

An image is a path, raw bytes, a PIL image, or an http(s)/data URL (passed through). A video is a
file sent whole as a `video_url` part (the server samples `num_frames` frames; SGLang's own client
decodes frames with OpenCV, which jaxsgl does not need).
"""
from __future__ import annotations

import base64
import io
import mimetypes
import os
from typing import Any

_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


def _sniff(data: bytes, default: str) -> str:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return default


def _read(source: Any, what: str) -> tuple[bytes, str]:
    """(bytes, mime type) of a path, bytes or PIL image; raises ValueError naming a bad source."""
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
        return data, _sniff(data, "image/jpeg" if what == "image" else "video/mp4")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ValueError(f"sgl.{what}: no such file {path!r}")
        with open(path, "rb") as f:
            data = f.read()
        guess = mimetypes.guess_type(path)[0]
        return data, _sniff(data, guess or ("image/jpeg" if what == "image" else "video/mp4"))
    if hasattr(source, "save"):  # a PIL image
        buf = io.BytesIO()
        source.save(buf, format="PNG")
        return buf.getvalue(), "image/png"
    raise ValueError(f"sgl.{what} takes a path, bytes or a PIL image, got {type(source).__name__}")


def data_url(source: Any, what: str = "image") -> str:
    """A `data:<mime>;base64,...` URL for source (URLs are returned unchanged)."""
    if isinstance(source, str) and source.startswith(("http://", "https://", "data:")):
        return source
    data, mime = _read(source, what)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_part(source: Any) -> dict[str, Any]:
    """OpenAI's image content part."""
    return {"type": "image_url", "image_url": {"url": data_url(source, "image")}}


def video_part(source: Any, num_frames: int) -> dict[str, Any]:
    """The `video_url` content part SGLang's and vLLM's OpenAI servers accept (with a frame count)."""
    if not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"sgl.video: num_frames must be a positive int, got {num_frames!r}")
    return {"type": "video_url", "video_url": {"url": data_url(source, "video"), "num_frames": num_frames}}


def message_with_parts(role: str, text: str, parts: list[dict[str, Any]], image_token: str = "") -> dict[str, Any]:
    """A chat message: plain content, or a list of parts (text first, as SGLang builds it; the
    placeholders the images left in the text are dropped from it, the parts carry the images)."""
    if not parts:
        return {"role": role, "content": text}
    if image_token:
        text = text.replace(image_token, "")
    return {"role": role, "content": [{"type": "text", "text": text}, *parts]}


def message_text(message: dict[str, Any]) -> str:
    """The text of a message whose content is a string or a list of parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if p.get("type") == "text")
