"""Rendering of the weekly and quarterly reports: HTML (Jinja2) with PNG charts (matplotlib, Agg), CSV, SMS text,
and the email message with the charts inline (CID) and the CSV attached.

Pure and blocking (matplotlib is slow to draw): callers run `render_*` in an executor, never on the event loop.
"""
from __future__ import annotations

import base64
import csv
import io
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from ingest.clock import VN_TZ
from ingest.vocabulary import CASE_STATE_LABELS, CLOCK_TEXTS, ops_text as say
from ingest.vocabulary import REPORT_STATUS_LABELS as STATUS_LABELS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from .reports import SCORE_WEIGHTS, AgencyFigures, Period, Ranked, Suggestion, deadline_kinds

# The clocks as the reports name them: one catalogue with dispatch's escalations (ingest/vocabulary.py).
DEADLINE_LABELS = {kind: texts["vi"] for kind, texts in CLOCK_TEXTS.items()}

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
                          autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)


@dataclass(frozen=True, slots=True, kw_only=True)
class Rendered:
    """One report, ready to write to files or to mail."""

    kind: str
    slug: str  # file-name stem, e.g. "weekly-2026-09-21-so-gtvt"
    title: str
    charts: dict[str, bytes]  # chart name -> PNG
    csv: dict[str, str]  # file name -> CSV text
    sms: str
    template: str
    context: dict[str, Any]

    def html(self, images: dict[str, str] | None = None) -> str:
        """The HTML; images default to data URIs, so the file stands alone (email passes `cid:` sources)."""
        if images is None:
            images = {name: "data:image/png;base64," + base64.b64encode(png).decode() for name, png in
                      self.charts.items()}
        return _env.get_template(self.template).render(**self.context, images=images)

    def write(self, directory: Path) -> list[Path]:
        directory.mkdir(parents=True, exist_ok=True)
        written = [directory / f"{self.slug}.html"]
        written[0].write_text(self.html(), encoding="utf-8")
        for name, png in self.charts.items():
            path = directory / f"{self.slug}-{name}.png"
            path.write_bytes(png)
            written.append(path)
        for name, text in self.csv.items():
            path = directory / name
            # utf-8-sig: spreadsheet programs read Vietnamese correctly only with the BOM.
            path.write_text(text, encoding="utf-8-sig", newline="")
            written.append(path)
        return written


def _now_label(now: float) -> str:
    return datetime.fromtimestamp(now, VN_TZ).strftime(say("generated_at"))


# -- charts ---------------------------------------------------------------------------------------
def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    buf = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buf)
    return buf.getvalue()


def volume_chart(f: AgencyFigures) -> bytes:
    labels = [say("received"), say("handled"), say("answered"), say("returned")]
    values = [f.received, f.handled, f.answered, f.returned]
    from matplotlib.figure import Figure  # imported when a report is drawn: intake processes never draw one
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 3.0), dpi=100)
    ax = fig.add_subplot()
    bars = ax.bar(labels, values, color=["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"])
    ax.bar_label(bars)
    ax.set_ylabel(say("cases"))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, max(values + [1]) * 1.2)
    ax.set_title(say("volume_title"))
    fig.tight_layout()
    return _png(fig)


def deadline_chart(f: AgencyFigures) -> bytes | None:
    rows = [(DEADLINE_LABELS.get(k, k), f.deadlines[k]) for k in deadline_kinds([f])
            if k in f.deadlines and (f.deadlines[k].on_time or f.deadlines[k].late)]
    if not rows:
        return None
    from matplotlib.figure import Figure  # imported when a report is drawn: intake processes never draw one
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8.0, 1.0 + 0.45 * len(rows)), dpi=100)
    ax = fig.add_subplot()
    names = [r[0] for r in rows]
    on_time = [r[1].on_time for r in rows]
    late = [r[1].late for r in rows]
    ax.barh(names, on_time, color="#2ca02c", label=say("on_time"))
    ax.barh(names, late, left=on_time, color="#d62728", label=say("late"))
    ax.invert_yaxis()
    ax.set_xlabel(say("deadline_count"))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    return _png(fig)


def ranking_chart(ranked: list[Ranked]) -> bytes | None:
    rows = [r for r in ranked if r.score is not None]
    if not rows:
        return None
    from matplotlib.figure import Figure  # imported when a report is drawn: intake processes never draw one
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(7.6, 0.6 + 0.3 * len(rows)), dpi=100)
    ax = fig.add_subplot()
    ax.barh([f"{r.rank}. {r.figures.agency}" for r in rows], [r.score or 0.0 for r in rows], color="#1f77b4")
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel(say("score"))
    ax.tick_params(axis="y", labelsize="small")
    fig.tight_layout()
    return _png(fig)


# -- CSV ------------------------------------------------------------------------------------------
def figures_header(kinds: list[str]) -> list[str]:
    return ["agency", "agency_name", "period_start", "period_end", "reports", "received", "handled", "answered",
            "returned_misrouted", "on_time", "late",
            *[c for k in kinds for c in (f"on_time_{k}", f"late_{k}")],
            "ratings", "rating_mean", *[f"rating_{i}" for i in range(1, 6)]]


def figures_row(f: AgencyFigures, period: Period, kinds: list[str]) -> list[Any]:
    per_kind = []
    for k in kinds:
        t = f.deadlines.get(k)
        per_kind += [t.on_time if t else 0, t.late if t else 0]
    mean = f.rating_mean
    return [f.agency, f.name, period.first_day.isoformat(), period.last_day.isoformat(), f.reports, f.received,
            f.handled, f.answered, f.returned, f.on_time, f.late, *per_kind, f.rating_count,
            "" if mean is None else f"{mean:.2f}", *f.ratings]


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def weekly_csv(figures: list[AgencyFigures], period: Period) -> str:
    kinds = deadline_kinds(figures)
    return _csv(figures_header(kinds), [figures_row(f, period, kinds) for f in figures])


# -- SMS ------------------------------------------------------------------------------------------
# GSM 03.38 default alphabet; the extension table's characters cost two septets.
GSM7_BASIC = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                 "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM7_EXTENSION = set("^{}\\[~]|€\f")


def unaccent(text: str) -> str:
    """Vietnamese without diacritics ('Sở GTVT' -> 'So GTVT'), the usual form of SMS to fit the GSM alphabet."""
    text = text.replace("đ", "d").replace("Đ", "D")
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))


def sms_encoding(text: str) -> str:
    return "GSM-7" if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text) else "UCS-2"


def sms_segments(text: str) -> list[str]:
    """Split as a phone would: one part up to 160 septets (70 UCS-2 chars), else parts of 153 (67) with the UDH."""
    if sms_encoding(text) == "GSM-7":
        cost = [2 if c in GSM7_EXTENSION else 1 for c in text]
        single, multi = 160, 153
    else:
        # Characters outside the BMP take two UTF-16 units.
        cost = [2 if ord(c) > 0xFFFF else 1 for c in text]
        single, multi = 70, 67
    if sum(cost) <= single:
        return [text]
    parts, current, used = [], [], 0
    for c, n in zip(text, cost):
        if used + n > multi:
            parts.append("".join(current))
            current, used = [], 0
        current.append(c)
        used += n
    if current:
        parts.append("".join(current))
    return parts


def weekly_sms(f: AgencyFigures, period: Period) -> str:
    """One GSM-7 segment when the figures allow it: the optional parts are dropped before the text is split."""
    head = f"1022 TPHCM tuan {period.first_day:%d/%m}-{period.last_day:%d/%m}, {f.agency}: "
    core = f"tiep nhan {f.received}, xu ly {f.handled}, tra loi {f.answered}"
    parts = [core, f"dung han {f.on_time}, tre han {f.late}"]
    optional = []
    if f.returned:
        optional.append(f"tra lai {f.returned}")
    if f.rating_count:
        optional.append(f"hai long {f.rating_mean:.1f}/5 ({f.rating_count} danh gia)")
    optional.append("Chi tiet qua email.")
    text = head + "; ".join(parts) + "."
    for extra in optional:
        candidate = text[:-1] + "; " + extra + "." if not extra.endswith(".") else text + " " + extra
        if len(sms_segments(candidate)) == 1:
            text = candidate
    return unaccent(text)


def quarterly_sms(ranked: list[Ranked], period: Period, n_suggestions: int) -> str:
    ranked_only = [r for r in ranked if r.rank is not None]
    text = f"1022 TPHCM {period.label}: "
    if ranked_only:
        top = ", ".join(f"{r.rank}. {r.figures.agency} {r.score:.0f}d" for r in ranked_only[:3])
        text += f"xep hang {top}"
        if len(ranked_only) > 3:
            last = ranked_only[-1]
            text += f"; cuoi {last.rank}. {last.figures.agency} {last.score:.0f}d"
        text += "; "
    text += f"{n_suggestions} hien ke."
    if len(sms_segments(text + " Chi tiet qua email.")) == 1:
        text += " Chi tiet qua email."
    return unaccent(text)


# -- reports --------------------------------------------------------------------------------------
def render_weekly(f: AgencyFigures, period: Period, now: float) -> Rendered:
    charts = {"volume": volume_chart(f)}
    deadlines = deadline_chart(f)
    if deadlines is not None:
        charts["deadlines"] = deadlines
    kinds = [k for k in deadline_kinds([f]) if k in f.deadlines]
    slug = f"weekly-{period.key}-{f.agency}"
    title = say("weekly_title", period=period.label, agency=f.name)
    context = {"title": title, "f": f, "period": period, "generated": _now_label(now),
               "deadline_rows": [(DEADLINE_LABELS.get(k, k), f.deadlines[k]) for k in kinds]}
    return Rendered(kind="weekly", slug=slug, title=title, charts=charts, csv={f"{slug}.csv": weekly_csv([f], period)},
                    sms=weekly_sms(f, period), template="weekly.html", context=context)


def render_quarterly(ranked: list[Ranked], suggestions: list[Suggestion], period: Period, now: float,
                     highlight: str | None = None) -> Rendered:
    charts = {}
    chart = ranking_chart(ranked)
    if chart is not None:
        charts["ranking"] = chart
    figures = [r.figures for r in ranked]
    kinds = deadline_kinds(figures)
    ranking_rows = [[r.rank if r.rank is not None else "", "" if r.score is None else f"{r.score:.1f}",
                     "" if r.figures.on_time_rate is None else f"{r.figures.on_time_rate:.3f}",
                     "" if r.answer_rate is None else f"{r.answer_rate:.3f}",
                     *figures_row(r.figures, period, kinds)] for r in ranked]
    suggestion_rows = [[s.report_id, datetime.fromtimestamp(s.received_at, VN_TZ).isoformat(timespec="seconds"),
                        s.channel, s.district or "", s.agency or "", s.status, s.incident_id or "", s.case_id or "",
                        s.case_state or "", s.excerpt] for s in suggestions]
    slug = f"quarterly-{period.key}" + (f"-{highlight}" if highlight else "")
    title = say("quarterly_title", period=period.label)
    weights = ", ".join(f"{int(100 * w)}% {label}" for label, w in
                        zip((say("on_time_rate"), say("answer_rate"), say("satisfaction")), SCORE_WEIGHTS.values()))
    view = [{"report_id": s.report_id, "received": datetime.fromtimestamp(s.received_at, VN_TZ).strftime("%d/%m/%Y"),
             "channel": s.channel, "district": s.district,
             "state": CASE_STATE_LABELS.get(s.case_state or "", STATUS_LABELS.get(s.status, s.status)),
             "excerpt": s.excerpt} for s in suggestions]
    context = {"title": title, "period": period, "ranked": ranked, "suggestions": view, "highlight": highlight,
               "weights": weights, "generated": _now_label(now)}
    csvs = {
        f"{slug}-ranking.csv": _csv(["rank", "score", "on_time_rate", "answer_rate", *figures_header(kinds)],
                                    ranking_rows),
        f"{slug}-suggestions.csv": _csv(["report_id", "received_at", "channel", "district", "agency", "status",
                                         "incident_id", "case_id", "case_state", "excerpt"], suggestion_rows),
    }
    return Rendered(kind="quarterly", slug=slug, title=title, charts=charts, csv=csvs,
                    sms=quarterly_sms(ranked, period, len(suggestions)), template="quarterly.html", context=context)


# -- email ----------------------------------------------------------------------------------------
def email_message(report: Rendered, *, sender: str, to: list[str], msgid_domain: str, now: float,
                  message_id: str | None = None) -> EmailMessage:
    """multipart/mixed: (text | related(HTML, PNG charts by CID)) + the CSV files as attachments."""
    msg = EmailMessage()
    msg["Subject"] = report.title
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(now, localtime=False)
    # A fixed Message-ID per report lets a resend after a crash be recognised as the same message.
    msg["Message-ID"] = message_id or f"<{report.slug}@{msgid_domain}>"
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: autoresponders must not answer it
    msg.set_content(report.sms.replace("; ", ";\n") + "\n\n" + say("details_attached") + "\n")
    cids = {name: f"<{name}.{report.slug}@{msgid_domain}>" for name in report.charts}
    msg.add_alternative(report.html({name: "cid:" + cid[1:-1] for name, cid in cids.items()}), subtype="html")
    html_part = msg.get_payload()[1]
    for name, png in report.charts.items():
        html_part.add_related(png, maintype="image", subtype="png", cid=cids[name], filename=f"{name}.png")
    for name, text in report.csv.items():
        msg.add_attachment(text.encode("utf-8-sig"), maintype="text", subtype="csv", filename=name)
    return msg
