"""A report as a Prefect artifact: its markdown with the figures embedded, so that the Prefect
UI shows them wherever the run wrote its files (the UI cannot resolve `![](metrics.png)`, a
path relative to a folder it never sees), and plain links to the full report's real location.

Figures are re-encoded as small JPEG data URIs (Prefect's markdown renderer shows them; tested
in a real browser), which keeps an artifact to a few hundred kB.
"""

from __future__ import annotations

import base64
import io
import re

from PIL import Image

MAX_WIDTH = 720
QUALITY = 72
IMAGE_LINK = re.compile(r"!\[([^\]]*)\]\(([^)\s]+)\)")


def data_uri(png: bytes, max_width: int = MAX_WIDTH, quality: int = QUALITY) -> str:
    """A figure as a small JPEG data URI (flattened on white, at most `max_width` wide)."""
    image: Image.Image = Image.open(io.BytesIO(png))
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        flat = Image.new("RGB", image.size, "white")
        flat.paste(image, mask=image.getchannel("A"))
        image = flat
    image = image.convert("RGB")
    if image.width > max_width:
        height = max(1, round(image.height * max_width / image.width))
        image = image.resize((max_width, height), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def artifact_markdown(markdown: str, figures: dict[str, bytes], links: dict[str, str]) -> str:
    """`markdown` with each `![alt](name)` whose name is in `figures` embedded, and the
    `links` ({what: URI}) listed first, said plainly (a local path or an s3:// URI)."""

    def embed(match: re.Match[str]) -> str:
        alt, target = match.group(1), match.group(2)
        return f"![{alt}]({data_uri(figures[target])})" if target in figures else match.group(0)

    where = [f"- {what}: `{uri}`" for what, uri in links.items()]
    body = IMAGE_LINK.sub(embed, markdown)
    return "\n".join([*where, "", body]) if where else body


def artifact_from_files(
    markdown: str, figures: dict[str, str], links: dict[str, str], s3_endpoint_url: str | None
) -> str:
    """`artifact_markdown` with the figures read from storage ({name in markdown: URI}); run
    as a Ray task so that their pixels stay out of the flow."""
    from pipeline.archive import storage

    storage.configure(s3_endpoint_url)
    read = {name: storage.read_bytes(uri) for name, uri in figures.items() if storage.exists(uri)}
    return artifact_markdown(markdown, read, links)
