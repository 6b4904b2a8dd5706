"""The pure MIME parser over a corpus of nasty messages, plus hypothesis properties."""
from __future__ import annotations

import unicodedata
from email.message import EmailMessage
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.email_parse import ParseError, ParseLimits, decode_text, parse_email, to_inbound, trim_reply
from channels.email_reply import compose_reply
from config.channels import EmailReplyOptions
from ingest.records import InboundMessage, Reporter
from ingest.store import StoredReport
from ingest.text import normalize

CORPUS = Path(__file__).parent / "corpus" / "email"
LINH = "Đường Nguyễn Văn Linh bị ngập sâu, xe máy chết máy hàng loạt."


def load(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


@pytest.mark.parametrize("name", ["windows-1258.eml", "latin1-label-utf8-body.eml", "latin1-label-cp1258-body.eml",
                                  "utf8-label-cp1258-body.eml", "unknown-charset.eml"])
def test_charsets_declared_or_wrongly_declared_give_the_vietnamese_text(name: str) -> None:
    parsed = parse_email(load(name))
    assert parsed.text == LINH
    assert unicodedata.is_normalized("NFC", parsed.text)


def test_windows_1258_encoded_word_subject_and_sender() -> None:
    parsed = parse_email(load("windows-1258.eml"))
    assert parsed.subject == "Ngập nước"
    assert parsed.sender_email == "ttb@example.vn"


def test_raw_8bit_headers_are_read_as_utf8() -> None:
    parsed = parse_email(load("raw-8bit-headers.eml"))
    assert parsed.subject == "Rác thải bốc mùi ở chợ Bến Thành"
    assert parsed.sender_name == "Lê Văn C"


def test_nfd_input_comes_out_nfc() -> None:
    parsed = parse_email(load("nfd-text.eml"))
    assert parsed.subject == "Quận Gò Vấp" and parsed.text == "Hẻm 83/16/4 đường Phan Văn Trị bị ngập."


def test_emoji_kept_control_characters_dropped() -> None:
    parsed = parse_email(load("emoji-and-controls.eml"))
    assert parsed.subject == "🚧 Công trình 🚧"
    assert parsed.text == "Công trình bỏ dở 🚧 gây nguy hiểm"


@pytest.mark.parametrize("name,reason", [("huge-headers.eml", "header_too_large"), ("deep-nesting.eml", "too_deep"),
                                         ("headers-only.eml", "no_content")])
def test_hopeless_mail_raises_parse_error_with_a_reason(name: str, reason: str) -> None:
    with pytest.raises(ParseError) as err:
        parse_email(load(name))
    assert err.value.reason == reason


def test_broken_boundary_is_recovered() -> None:
    assert parse_email(load("broken-mime.eml")).text == "Cống bị nghẹt trước trường học."


def test_unterminated_multipart_keeps_text_and_the_partial_photo() -> None:
    parsed = parse_email(load("unterminated-multipart.eml"))
    assert parsed.text == "Cây xanh nghiêng sắp đổ."
    assert [a.content_type for a in parsed.attachments] == ["image/jpeg"]


def test_base64_garbage_does_not_crash() -> None:
    parsed = parse_email(load("base64-garbage.eml"))
    assert parsed.message_id == "<b64@example.vn>"
    assert unicodedata.is_normalized("NFC", parsed.text)


def test_html_only_mail_gives_text_without_script_style_or_quotes() -> None:
    parsed = parse_email(load("html-only.eml"))
    assert parsed.text == "Đèn giao thông & đèn đường tắt\nở ngã tư Hàng Xanh"


def test_attachment_type_is_sniffed_not_trusted() -> None:
    parsed = parse_email(load("attachment-sniffed.eml"))
    (att,) = parsed.attachments
    assert att.declared_type == "application/pdf" and att.content_type == "image/jpeg"
    assert att.filename == "ổ gà.pdf"
    assert att.data.startswith(b"\xff\xd8\xff")


def test_attachment_caps_skip_but_never_fail() -> None:
    parsed = parse_email(load("attachment-sniffed.eml"), limits=ParseLimits(max_attachment_bytes=10))
    assert parsed.attachments == () and parsed.skipped_attachments == 1
    assert parsed.text == "Ảnh ổ gà đính kèm."


@pytest.mark.parametrize("name,flag", [("out-of-office.eml", "auto_reply"), ("bounce-dsn.eml", "bounce"),
                                       ("precedence-list.eml", "bulk")])
def test_loop_mail_is_flagged(name: str, flag: str) -> None:
    assert flag in parse_email(load(name)).flags


def test_ordinary_mail_has_no_flags() -> None:
    for name in ("windows-1258.eml", "raw-8bit-headers.eml", "reply-quoted-vi.eml", "attachment-sniffed.eml"):
        assert parse_email(load(name)).flags == (), name


def test_reply_is_trimmed_and_threaded() -> None:
    parsed = parse_email(load("reply-quoted-vi.eml"))
    assert parsed.text == "Vẫn chưa được xử lý, đề nghị kiểm tra lại."
    assert "Cảm ơn bạn" in parsed.full_text  # untrimmed text kept, and the raw mail is what gets stored
    assert parsed.references[0] == "<1022.r42.0123abcd@1022.test>"
    assert "<orig@example.vn>" in parsed.references
    assert parsed.case_token == "1022-42"


def test_outlook_signature_and_history_are_trimmed() -> None:
    assert parse_email(load("outlook-reply.eml")).text == "Đã có người đến sửa, cảm ơn."


def test_no_message_id_falls_back_to_the_raw_hash() -> None:
    raw = load("no-message-id.eml")
    parsed = parse_email(raw)
    assert parsed.message_id is None and parsed.idempotency_key.startswith("sha256:")
    assert parse_email(raw + b"\r\n").idempotency_key != parsed.idempotency_key


def test_to_inbound_fills_the_record() -> None:
    parsed = parse_email(load("reply-quoted-vi.eml"))
    msg = to_inbound(parsed, channel_instance="mailbox-1", received_at="2025-03-10T08:00:00+07:00")
    assert isinstance(msg, InboundMessage)
    assert (msg.channel, msg.idempotency_key, msg.external_id) == ("email", "<rq@example.vn>", "<rq@example.vn>")
    assert msg.reporter.email == "a@example.vn" and msg.reporter.reply_to == "<rq@example.vn>"
    assert msg.thread_ref == "<1022.r42.0123abcd@1022.test>"


def test_trim_keeps_the_text_when_everything_would_go() -> None:
    raw = b"From: a@example.vn\r\nSubject: s\r\n\r\n> only a quote\r\n"
    assert parse_email(raw).text == "> only a quote"
    assert trim_reply("line\n-- \nsig") == "line"


def test_our_outgoing_mail_is_marked_and_threads_back() -> None:
    report = StoredReport(id=77, status="dispatched", classification=None, incident_id="INC-000001",
                          message=InboundMessage(channel="email", channel_instance="m", idempotency_key="<a@b>",
                                                 received_at="2025-03-10T08:00:00+07:00", text="t",
                                                 subject="Ổ gà", reporter=Reporter(email="a@b.vn", reply_to="<a@b>")))
    msg = compose_reply(report, "Cảm ơn bạn.", EmailReplyOptions(from_address="1022@1022.test"), 1_790_000_000.0)
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<a@b>"
    assert "[1022-77]" in msg["Subject"]
    answer = (f"From: a@b.vn\r\nSubject: Re: {msg['Subject']}\r\nIn-Reply-To: {msg['Message-ID']}\r\n\r\nok\r\n").encode()
    parsed = parse_email(answer)
    assert parsed.references == (msg["Message-ID"],) and parsed.case_token == "1022-77"
    # And our own mail, if it ever comes back to us, is recognised as a loop.
    assert "auto_reply" in parse_email(msg.as_bytes()).flags


def test_decode_text_prefers_valid_utf8_over_a_single_byte_label() -> None:
    assert decode_text("Quận 7".encode(), "windows-1252") == "Quận 7"
    assert decode_text(b"caf\xe9", "iso-8859-1") == "café"


# -- properties ----------------------------------------------------------------------------------------

@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_arbitrary_bytes_never_raise_anything_but_parse_error(raw: bytes) -> None:
    try:
        parsed = parse_email(raw)
    except ParseError:
        return
    assert unicodedata.is_normalized("NFC", parsed.text)
    assert parsed.subject is None or unicodedata.is_normalized("NFC", parsed.subject)


_HEADER_NAMES = st.sampled_from(["Subject", "From", "Content-Type", "Content-Transfer-Encoding", "Message-ID",
                                 "In-Reply-To", "References", "Auto-Submitted", "Content-Disposition", "X-Other"])
_CHUNKS = st.sampled_from([b"=?utf-8?B?", b"=?windows-1258?Q?", b"?=", b"multipart/mixed; boundary=", b"\"b\"",
                           b"--b\r\n", b"--b--\r\n", b"base64", b"quoted-printable", b"text/html", b"charset=",
                           b"\xc3", b"\xd0", b"=E1=BB", b"<x@y>", b"\r\n", b"\n", b" ", b"<p>", b"&amp;", b"\x00"])


@st.composite
def mailish(draw: st.DrawFn) -> bytes:
    headers = draw(st.lists(st.tuples(_HEADER_NAMES, st.lists(_CHUNKS | st.binary(max_size=20), max_size=8)),
                            min_size=1, max_size=8))
    head = b"".join(name.encode() + b": " + b"".join(v) + b"\r\n" for name, v in headers)
    body = b"".join(draw(st.lists(_CHUNKS | st.binary(max_size=40), max_size=30)))
    return head + b"\r\n" + body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mailish())
def test_mail_shaped_garbage_never_raises_anything_but_parse_error(raw: bytes) -> None:
    try:
        parsed = parse_email(raw)
    except ParseError:
        return
    assert unicodedata.is_normalized("NFC", parsed.text)
    assert parsed.subject is None or unicodedata.is_normalized("NFC", parsed.subject)
    assert all(unicodedata.is_normalized("NFC", a.filename) for a in parsed.attachments if a.filename)


_WORDS = st.sampled_from(["đường", "ngập", "ổ", "gà", "quận", "Gò", "Vấp", "hẻm", "83/16/4", "Lê", "Lợi", "rác",
                          "cây", "đổ", "cống", "nghẹt", "phường", "Bến", "Nghé", "nước", "đèn", "hỏng", "🚧", "ạ"])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_WORDS, min_size=1, max_size=12).map(" ".join), min_size=1, max_size=6),
       st.sampled_from(["utf-8", "windows-1258"]), st.sampled_from(["base64", "quoted-printable", "8bit"]),
       st.booleans())
def test_well_formed_vietnamese_mail_round_trips(lines: list[str], charset: str, cte: str, nfd: bool) -> None:
    text = "\n".join(lines)
    if charset == "windows-1258" and "🚧" in text:
        charset = "utf-8"
    msg = EmailMessage()
    msg["From"] = "Người Dân <dan@example.vn>"
    # Short: CPython's own header folding drops a space between the encoded words it splits a long one into.
    subject = " ".join(lines[0].split()[:4])
    msg["Subject"] = subject
    msg["Message-ID"] = "<p@example.vn>"
    body = unicodedata.normalize("NFD", text) if nfd else text
    if charset == "windows-1258":
        msg.set_content(_cp1258(body), maintype="text", subtype="plain", cte=cte if cte != "8bit" else "base64",
                        params={"charset": "windows-1258"})
    else:
        msg.set_content(body, charset="utf-8", cte=cte)
    parsed = parse_email(msg.as_bytes())
    assert parsed.text == normalize(text)
    assert parsed.subject == normalize(subject)
    assert parsed.sender_name == "Người Dân"


def _cp1258(text: str) -> bytes:
    out = b""
    for ch in unicodedata.normalize("NFC", text):
        try:
            out += ch.encode("cp1258")
            continue
        except UnicodeEncodeError:
            pass
        base, *marks = unicodedata.normalize("NFD", ch)
        for mark in list(marks):
            composed = unicodedata.normalize("NFC", base + mark)
            if len(composed) == 1:
                try:
                    composed.encode("cp1258")
                except UnicodeEncodeError:
                    continue
                base = composed
                marks.remove(mark)
                break
        out += base.encode("cp1258") + "".join(marks).encode("cp1258")
    return out


@pytest.mark.parametrize("from_value", [
    "=?utf-8?q?dieuhanh=40sawaco=2Ecom=2Evn?=",  # an encoded word is display text, never an address
    "=?utf-8?b?ZGlldWhhbmhAc2F3YWNvLmNvbS52bg==?=",
    "=?utf-8?q?dieuhanh=40sawaco=2Ecom=2Evn?= <x@evil.example>",
])
def test_an_encoded_word_never_becomes_the_from_address(from_value: str) -> None:
    """Red team: decoding RFC 2047 before reading the address turned a display text into the agency's
    address, the one the email-answer check trusts (a DMARC relay reads the raw header and sees no such
    address)."""
    raw = (f"From: {from_value}\r\nTo: tra-loi@tphcm.gov.vn\r\nSubject: Re: [1022 #CASE-000001]\r\n"
           "Message-ID: <f@evil.example>\r\n\r\nDa xu ly xong.\r\n").encode()
    assert parse_email(raw).from_email in (None, "x@evil.example")


def test_an_attachments_file_name_keeps_only_its_last_segment() -> None:
    # Before: "../../etc/passwd" and a right-to-left override were kept and mailed on to the agency as written.
    for name, kept in (("../../etc/passwd", "passwd"), ("C:\\Users\\x\\anh.jpg", "anh.jpg"),
                       ("\u202egpj.exe", "gpj.exe"), ("..", None)):
        msg = EmailMessage()
        msg["From"] = "dan@example.org"
        msg["Subject"] = "Ống nước bể"
        msg.set_content("Ống nước bể đường Lê Lợi")
        msg.add_attachment(b"\xff\xd8\xff\xe0 jpeg", maintype="image", subtype="jpeg", filename=name)
        (att,) = parse_email(msg.as_bytes()).attachments
        assert att.filename == kept, name
