"""Where a report happened, as the classifier decides it and as the chat channels ask for it: the gazetteer, and
on the 2025 map the ward map, over `locate`. Needs no embedder, so an intake-only process (`serve --role intake`,
and the intake side of `serve`) builds it for the chat bots' place question without loading a model."""
from __future__ import annotations

from dataclasses import replace

from config.directory import Directory
from ingest.addresses import Gazetteer
from ingest.records import Place

from classifier.routing.locate import locate, points_at
from classifier.routing.place import load_gazetteer
from classifier.routing.wards2025 import WardMap, load_ward_map, resolve_unit


class Places:
    def __init__(self, directory: Directory, gazetteer: Gazetteer | None = None) -> None:
        self.directory = directory
        self.gazetteer = gazetteer or load_gazetteer(directory)
        # Read on both maps: since July 2025 people name the new units ("phường Sài Gòn", "phường Hạnh Thông").
        names = load_ward_map({k: d.name_vi for k, d in directory.districts.items()},
                              street_names=tuple(dict.fromkeys(s for _, s, _ in self.gazetteer.streets)))
        self.ward_map: WardMap | None = names if directory.structure == "2025" else None
        self._new_names: WardMap | None = None if directory.structure == "2025" else names
        # Over the reporter's own address only a unit named as one ("phường Bàn Cờ") counts: a bare name is as
        # often a person, a school or a workplace ("em tôi học ở Chánh Hưng").
        self._prefixed_names = replace(names, bare_unit_keys=())
        self._district_ids = {key: district for district, key in names.hcmc_ids.items()}

    def place(self, text: str, lat: float | None, lon: float | None, reporter_address: str | None = None) -> Place:
        place = locate(text, self.gazetteer, lat=lat, lon=lon, reporter_address=reporter_address)
        if self._new_names is not None:
            place = self._by_new_unit(text, place)
        # A place taken from the reporter's address is resolved to its unit from that address, not the text.
        return self.with_unit(reporter_address if place.source == "reporter_address" and reporter_address else text,
                              place)

    def _by_new_unit(self, text: str, place: Place) -> Place:
        """On the 2023 map, a 2025 unit the text names, when no other place word or GPS gave the district (or only
        the reporter's address did): its former district, when it lies in one of former TP.HCM's. Before, "rác ở
        phường Sài Gòn" found no district and went to the operator unit."""
        if place.district is not None and (place.source != "reporter_address" or points_at(text) == "registered"):
            return place
        assert self._new_names is not None
        match = resolve_unit(text, self._prefixed_names if place.district is not None else self._new_names)
        unit = self._new_names.units.get(match.unit or "")
        if unit is None or len(unit.former_districts) != 1:
            return place
        district = self._district_ids.get(f"{unit.former_province}|{unit.former_districts[0]}")
        if district is None:
            return place
        return replace(place, district=district, ward=None, source="text")

    def place_found(self, text: str, lat: float | None, lon: float | None) -> bool:
        """Whether the words or the GPS fix place a report in a district (or a 2025 unit): when not, a chat
        channel asks the reporter before the report would go to the operator unit (channels/place_question.py)."""
        place = self.place(text, lat, lon)
        return place.district is not None or place.unit is not None

    def unit_candidates(self, text: str, lat: float | None, lon: float | None) -> tuple[str, ...]:
        """The names of the 2025 units a text could be in when its words do not decide one (for the chat bot's
        question): "Phường Bình Tiên (Quận 6 cũ)", ...; () when one unit or none is found, or on the 2023 map."""
        place = self.place(text, lat, lon)
        if place.unit is not None or not place.unit_candidates:
            return ()
        units = self.directory.units
        return tuple(f"{units[s].full_name} ({', '.join(units[s].former_districts)} cũ)" if s in units else s
                     for s in place.unit_candidates)

    def with_unit(self, text: str, place: Place) -> Place:
        """On the 2025 map, the new unit (or its candidates) and the label people read, beside the old names."""
        if self.ward_map is None:
            return place
        match = resolve_unit(text, self.ward_map, place)
        return replace(place, unit=match.unit, unit_candidates=match.candidates,
                       unit_label=self.ward_map.label(match))
