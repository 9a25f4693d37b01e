"""Reading uploaded documents from a request: raw bodies of several content types, or Carina's multipart form.

Carina's CLI posted `multipart/form-data` with the file in field `upload`; REST clients and `oneenv` send the text
as the body. Either way the gateway reads at most `limit` bytes (a bigger upload is refused before it is held in
memory) and hands back text.
"""

from __future__ import annotations

from fastapi import HTTPException, Request, status
from starlette.datastructures import UploadFile

RUBY_TYPES = ("text/x-ruby", "application/x-ruby")
CONFIG_TYPES = ("application/yaml", "text/yaml", "application/x-yaml", "text/x-yaml", "text/plain",
                "application/json", *RUBY_TYPES)
TEMPLATE_TYPES = ("text/plain", "application/octet-stream", "text/x-opennebula-template")
MULTIPART = "multipart/form-data"


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def too_large(limit: int) -> HTTPException:
    return HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"upload larger than {limit} bytes")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, accepted: tuple[str, ...], limit: int) -> str:
    """The uploaded text, from the raw body (one of `accepted` types) or the multipart field `upload`.

    Raises:
        HTTPException: 415 for another content type, 413 when larger than `limit`, 422 when empty or not UTF-8.
    """
    kind = media_type(request)
    if kind == MULTIPART:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
            raise too_large(limit)
        try:
            form = await request.form(max_files=1, max_fields=10, max_part_size=limit)
        except Exception as exc:  # noqa: BLE001 - python-multipart raises several types for a broken form
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"unreadable multipart form: {exc}") from None
        field = form.get("upload")
        if isinstance(field, UploadFile):
            data = await field.read(limit + 1)
        elif isinstance(field, str):
            data = field.encode()
        else:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "multipart form without an 'upload' field")
        if len(data) > limit:
            raise too_large(limit)
    elif kind in accepted:
        data = await _read_body(request, limit)
    else:
        wanted = ", ".join((*accepted, MULTIPART + " (field 'upload')"))
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            f"unsupported content type '{kind or 'none'}': send one of {wanted}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"the upload is not UTF-8 text (byte {exc.start})") from None
    if not text.strip():
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the upload is empty")
    return text
