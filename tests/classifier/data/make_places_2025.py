"""Writes places-2025-reports.jsonl: reports as people write them, for the 2025 place test (not training data).

Run once by hand (`python tests/classifier/data/make_places_2025.py`); the output is committed, the test reads
only the output. Each line: id, text, optional lat/lon, `style`, and `expected` = {"unit": slug} when the words
decide one unit, {"review": [slugs]} when they cannot (an old district alone, a split old ward with no street
data, a former city's name alone), {"none": true} when no place is named. The expected answer comes from the
Resolution's mapping (config/data/hcmc-2025-*.json), the writing from the styles below: old and new names,
both, abbreviations (P.7, Q6, F7, TP, TX), without diacritics, chat style, former provinces.
"""
from __future__ import annotations

import json
import random
import sys
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
OUT = Path(__file__).with_name("places-2025-reports.jsonl")

PROBLEMS = [
    "ổ gà to giữa đường, xe máy té hoài", "đèn đường tắt cả tuần nay", "rác chất đống bốc mùi hôi thối",
    "nước ngập tới đầu gối sau cơn mưa", "cây xanh bị gãy nhánh đè lên dây điện", "mất nước từ sáng tới giờ",
    "quán nhậu hát karaoke ồn tới 1 giờ sáng", "lấn chiếm vỉa hè bán hàng không có lối đi", "cống bị nghẹt tràn nước thải",
    "xây nhà không phép lấn ra hẻm", "nắp hố ga bị vỡ rất nguy hiểm", "đèn giao thông chỉ chớp vàng gây kẹt xe",
    "có người đổ xà bần ra đất trống", "khói từ xưởng gần nhà ngột ngạt lắm", "dây cáp viễn thông chằng chịt sà xuống thấp",
    "mất điện không báo trước", "xe tải đậu chiếm hết lòng đường", "nước máy đục có mùi lạ",
]
OPENERS = ["", "ad ơi ", "alo 1022 ", "cho em phản ánh ", "kính gửi tổng đài, ", "Dạ em chào anh chị, ", "Xin báo: "]
CLOSERS = ["", " nha ad", ", mong được xử lý sớm", " ạ", "!!!", ", cảm ơn", " giúp dân với"]
HOUSES = ["", "trước nhà số 12 ", "hẻm 45 ", "gần số 230/5 ", "đối diện nhà 7A ", "chỗ ngã tư ", ""]

NUMBERED_STYLES = ["P.{n}, Q.{d}", "phường {n}, quận {d}", "p{n} q{d}", "F{n} Q{d}", "phường {n} Q.{d}", "P{n}Q{d}",
                   "P. {n} - Q. {d}", "phuong {n} quan {d}"]
NAMED_DISTRICT_NUMBERED = ["P.{n}, Q. {dn}", "phường {n} quận {dn}", "F{n} {dn}", "p{n} {dn}", "phường {n}, {dn}"]
OLD_NAMED = ["phường {w}, {dfull}", "P. {w}, {dshort}", "p {w} {dshort}", "{wfull} {dfull}", "xã {w} - {dfull}"]
NEW_STYLES = ["phường {w}", "P. {w}", "{wfull}", "tại {wfull} (mới)", "{w} ward"]
MIXED = ["{old} (nay là {new})", "{new} ({old} cũ)", "{new}, trước là {old}", "{old} giờ là {new}"]


def fold(text: str) -> str:
    text = text.replace("đ", "d").replace("Đ", "D")
    return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")


def district_short(name: str) -> str:
    for long, short in (("Quận ", "Q."), ("Huyện ", "H. "), ("Thành phố ", "TP "), ("Thị xã ", "TX ")):
        if name.startswith(long):
            return short + name[len(long):]
    return name


def district_bare(name: str) -> str:
    for long in ("Quận ", "Huyện ", "Thành phố ", "Thị xã "):
        if name.startswith(long):
            return name[len(long):]
    return name


def main() -> int:
    units = json.loads((REPO / "config/data/hcmc-2025-wards.json").read_text(encoding="utf-8"))["units"]
    mapping = json.loads((REPO / "config/data/hcmc-2025-old-to-new.json").read_text(encoding="utf-8"))
    by_code = {u["code"]: u for u in units}
    old = [("TP.HCM", m) for m in mapping["mappings"]]
    for province, rows in mapping["other_former_provinces"].items():
        old += [(province, m) for m in rows]
    district_units: dict[str, list[str]] = {}
    for _, m in old:
        bucket = district_units.setdefault(m["district"], [])
        bucket += [by_code[u["code"]]["slug"] for u in m["new_units"] if by_code[u["code"]]["slug"] not in bucket]
    rng = random.Random(2025)
    out: list[dict] = []

    def expected_for(m: dict) -> dict:
        slugs = [by_code[u["code"]]["slug"] for u in m["new_units"]]
        return {"unit": slugs[0]} if len(slugs) == 1 else {"review": sorted(slugs)}

    def add(style: str, place: str, expected: dict, *, plain: bool | None = None) -> None:
        problem = rng.choice(PROBLEMS)
        house = rng.choice(HOUSES)
        shape = rng.randrange(4)
        if shape == 0:
            text = f"{rng.choice(OPENERS)}{problem} {house}{place}{rng.choice(CLOSERS)}"
        elif shape == 1:
            text = f"{place}: {problem}{rng.choice(CLOSERS)}"
        elif shape == 2:
            text = f"{rng.choice(OPENERS)}{house}ở {place} {problem}{rng.choice(CLOSERS)}"
        else:
            text = f"Địa chỉ: {house}{place}. Nội dung: {problem}."
        if plain if plain is not None else rng.random() < 0.35:
            text, style = fold(text).lower() if rng.random() < 0.7 else fold(text), style + "/no-diacritics"
        out.append({"id": f"p25-{len(out) + 1:04d}", "text": text.strip(), "style": style, "expected": expected})

    hcmc = [m for p, m in old if p == "TP.HCM"]
    numbered = [m for m in hcmc if m["ward"].split()[-1].isdigit()]
    named = [m for m in hcmc if not m["ward"].split()[-1].isdigit()]
    # Old numbered wards of former TP.HCM: the commonest way people write an address.
    for m in rng.sample(numbered, 70):
        n = m["ward"].split()[-1]
        d = m["district"]
        if d.startswith("Quận ") and d.split()[-1].isdigit():
            place = rng.choice(NUMBERED_STYLES).format(n=n, d=d.split()[-1])
        else:
            place = rng.choice(NAMED_DISTRICT_NUMBERED).format(n=n, dn=district_bare(d))
        add("old-numbered", place, expected_for(m))
    # Old named wards with their district.
    for m in rng.sample(named, 50):
        w = m["ward"].split(" ", 1)[1] if m["ward"].startswith(("Phường ", "Xã ")) else m["ward"]
        w = w.replace("Trấn ", "") if m["ward"].startswith("Thị trấn") else w
        if m["ward"].startswith("Thị trấn"):
            w = m["ward"][len("Thị trấn "):]
            place = rng.choice(["thị trấn {w}, {dfull}", "TT {w} {dshort}"]).format(
                w=w, dfull=m["district"], dshort=district_short(m["district"]))
        else:
            style = rng.choice(OLD_NAMED if m["ward"].startswith("Xã") else OLD_NAMED[:4])
            if m["ward"].startswith("Xã"):
                style = rng.choice(["xã {w}, {dfull}", "xa {w} {dshort}", "{wfull} {dfull}"])
            place = style.format(w=w, wfull=m["ward"], dfull=m["district"], dshort=district_short(m["district"]))
        add("old-named", place, expected_for(m))
    # New unit names alone.
    for u in rng.sample(units, 60):
        style = rng.choice(NEW_STYLES)
        if u["type"] != "phuong":
            style = rng.choice(["{wfull}", "xã {w}", "tại {wfull}"]) if u["type"] == "xa" else "{wfull}"
        add("new", style.format(w=u["name"], wfull=u["full_name"]), {"unit": u["slug"]})
    # Both eras in one text, including split old wards pinned by the new name.
    split = [(p, m) for p, m in old if m["split"]]
    for p, m in rng.sample(old, 25) + split[:25]:
        new = by_code[rng.choice(m["new_units"])["code"]]
        n = m["ward"].split()[-1]
        if m["ward"].split()[-1].isdigit() and m["district"].startswith("Quận ") and m["district"].split()[-1].isdigit():
            old_text = f"P.{n} Q.{m['district'].split()[-1]}"
        else:
            old_text = f"{m['ward']}, {district_short(m['district'])}"
        add("mixed", rng.choice(MIXED).format(old=old_text, new=new["full_name"]), {"unit": new["slug"]})
    # Split old wards named alone: the words cannot decide, a person must.
    for p, m in split:
        n = m["ward"].split()[-1]
        if n.isdigit() and m["district"].startswith("Quận ") and m["district"].split()[-1].isdigit():
            place = rng.choice(NUMBERED_STYLES).format(n=n, d=m["district"].split()[-1])
        elif n.isdigit():
            place = f"phường {n}, {m['district']}"
        else:
            place = f"{m['ward']}, {m['district']}"
        add("split", place, expected_for(m))
    # Former provinces: their old wards with their town, and the towns alone.
    former = [(p, m) for p, m in old if p != "TP.HCM"]
    for p, m in rng.sample(former, 55):
        dbare = district_bare(m["district"])
        if m["ward"].startswith("Huyện"):
            place = m["ward"]
        elif m["ward"].split()[-1].isdigit():
            place = rng.choice(["phường {n} {d}", "P{n} TP {d}", "P.{n}, tp {d}"]).format(n=m["ward"].split()[-1], d=dbare)
        else:
            place = rng.choice(["{w}, {d}", "{w} - TP {d}", "{w} ({d})"]).format(w=m["ward"], d=dbare)
        if m["ward"].startswith("Xã") and m["district"].startswith("Huyện"):
            place = f"{m['ward']}, huyện {dbare}"
        add("former-province", place, expected_for(m))
    for district in ("Thành phố Dĩ An", "Thành phố Thuận An", "Thành phố Vũng Tàu", "Thành phố Bà Rịa", "Thành phố Thủ Dầu Một",
                     "Thành phố Bến Cát", "Huyện Châu Đức", "Huyện Xuyên Mộc", "Huyện Dầu Tiếng", "Thành phố Phú Mỹ"):
        bare = district_bare(district)
        for place in (f"TP {bare}", fold(bare).lower()):
            add("former-town-alone", place, {"review": sorted(district_units[district])}, plain=False)
    # Old districts of former TP.HCM alone.
    for district in ("Quận 6", "Quận Gò Vấp", "Quận 12", "Huyện Củ Chi", "Quận Tân Phú", "Quận 3", "Huyện Nhà Bè",
                     "Quận Bình Thạnh", "Quận 8", "Thành phố Thủ Đức"):
        for place in (district, fold(district).lower()):
            add("old-district-alone", place, {"review": sorted(district_units[district])}, plain=False)
    # Wards of the 2023 list merged into neighbours before the 2025 reform: the mapping does not list them, so
    # only their district is known and a person picks the unit.
    directory = json.loads((REPO / "config/data/agencies.json").read_text(encoding="utf-8"))
    known = {(m["district"], fold(m["ward"]).lower()) for m in hcmc}
    known |= {(m["district"], fold(m["alt_spelling"]).lower()) for m in hcmc if m.get("alt_spelling")}
    for d in directory["districts"]:
        for ward in d["wards"][::2]:
            if ward.split()[-1].isdigit() and (d["name_vi"], fold(ward).lower()) not in known:
                n, dn = ward.split()[-1], d["name_vi"]
                place = (f"P.{n} Q.{dn.split()[-1]}" if dn.split()[-1].isdigit() else f"phường {n} {district_bare(dn)}")
                add("merged-before-2025", place, {"review": sorted(district_units[dn])})
    # Chat messages with no place at all.
    for _ in range(10):
        add("no-place", "", {"none": True})
    with open(OUT, "w", encoding="utf-8") as fh:
        for row in out:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(out)} reports -> {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
