"""The bounded decoders every channel uses for bodies from outside: depth, Unicode, charsets, part counts."""
from __future__ import annotations

import pytest

from ingest.untrusted import BodyError, check_text, decode_charset, loads_json, parse_multipart, single_line


def test_lone_surrogates_are_refused_but_surrogate_pairs_are_emoji() -> None:
    with pytest.raises(BodyError, match="lone surrogate"):
        loads_json(b'{"description": "x \\ud800"}')
    with pytest.raises(BodyError, match="lone surrogate"):
        loads_json(b'{"\\udfff": 1}')  # in a key too
    assert loads_json(b'{"d": "\\ud83d\\ude00"}') == {"d": "\U0001F600"}


def test_depth_is_bounded_without_a_recursion_error() -> None:
    for depth in (33, 1_000, 100_000):
        with pytest.raises(BodyError, match="nested deeper"):
            loads_json(b"[" * depth + b"]" * depth)
    assert loads_json(b"[" * 32 + b"]" * 32) is not None


@pytest.mark.parametrize("raw", [b"\xff{}", b"{", b"NaN", b'{"a": Infinity}', b""])
def test_not_json_is_a_body_error(raw: bytes) -> None:
    with pytest.raises(BodyError):
        loads_json(raw)


@pytest.mark.parametrize("charset", ["rot13", "base64", "zlib", "no-such-charset", "utf-8\x00", ""])
def test_unknown_and_non_text_charsets_are_refused(charset: str) -> None:
    if charset == "":
        assert decode_charset(b"abc", charset) == "abc"  # none declared: UTF-8
        return
    with pytest.raises(BodyError, match="charset"):
        decode_charset(b"abc", charset)


def test_known_charsets_decode() -> None:
    assert decode_charset("Phản ánh".encode("utf-8"), "UTF-8") == "Phản ánh"
    assert decode_charset("gà".encode("cp1258"), "windows-1258") == "gà"
    with pytest.raises(BodyError):
        decode_charset(b"\xff\xfe\xfa", "utf-8")


@pytest.mark.parametrize("value", ["Nguyễn\r\nBcc: x@evil.example", "a\nb", "a\rb", "a\x00b", "a\u2028b", "x\x85y"])
def test_single_line_fields_refuse_line_breaks(value: str) -> None:
    with pytest.raises(BodyError, match="single line"):
        single_line(value, "name")


def test_single_line_accepts_ordinary_names() -> None:
    assert single_line("Trần Thị Bích", "name") == "Trần Thị Bích"
    with pytest.raises(BodyError):
        check_text("a\udc80")


def _multipart(parts: list[bytes], boundary: bytes = b"b0undary") -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + boundary + b"--\r\n"


def test_multipart_parts_fields_files_and_charsets() -> None:
    body = _multipart([
        b'Content-Disposition: form-data; name="description"\r\n\r\nC\xe1\xbb\x91ng ng\xe1\xba\xadp',
        b'Content-Disposition: form-data; name="media"; filename="\xe1\xbb\x95 g\xc3\xa0.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff\r\n\x00",
    ])
    desc, photo = parse_multipart(body, "multipart/form-data; boundary=b0undary")
    assert (desc.name, desc.filename, desc.data) == ("description", None, "Cống ngập".encode())
    assert (photo.name, photo.filename, photo.content_type, photo.data) == ("media", "ổ gà.jpg", "image/jpeg",
                                                                           b"\xff\xd8\xff\r\n\x00")


def test_multipart_part_count_is_checked_before_parsing() -> None:
    part = b'Content-Disposition: form-data; name="f"\r\n\r\nx'
    with pytest.raises(BodyError, match="more than 64 parts"):
        parse_multipart(_multipart([part] * 100_000), "multipart/form-data; boundary=b0undary")
    assert len(parse_multipart(_multipart([part] * 64), "multipart/form-data; boundary=b0undary")) == 64


@pytest.mark.parametrize("body", [
    b"", b"--b0undary", b"--b0undary\r\n", b"--b0undary\r\nContent-Disposition: form-data\r\n\r\nx\r\n--b0undary--",
    b"--b0undary\r\n\r\nno headers\r\n--b0undary--", b"no delimiter at all",
    b"--b0undary\r\nContent-Disposition: form-data; name=\"a\"\r\n" + b"X: " + b"y" * 9000 + b"\r\n\r\nv\r\n--b0undary--",
])
def test_broken_multipart_is_a_body_error(body: bytes) -> None:
    with pytest.raises(BodyError):
        parse_multipart(body, "multipart/form-data; boundary=b0undary")


def test_multipart_without_boundary() -> None:
    with pytest.raises(BodyError, match="boundary"):
        parse_multipart(b"--x\r\n", "multipart/form-data")
