"""The agency catalog as the dialogues need it: names per language, relevance of location/photo, search."""

from __future__ import annotations

import re
import unicodedata

from config.agencies import Agency, load_agencies

_FOLD = str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا", "ة": "ه", "ى": "ي", "ـ": None})


def _fold(text: str) -> str:
    # Enough folding for a name search typed by a citizen (hamza, teh marbuta, alef maksura, case, marks).
    text = unicodedata.normalize("NFKC", text).translate(_FOLD).casefold()
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    return re.sub(r"\s+", " ", text).strip()


class CatalogAgencies:
    def __init__(self, agencies: tuple[Agency, ...] | None = None) -> None:
        self._agencies = {a.id: a for a in (agencies or load_agencies())}
        self._forms = {a.id: [_fold(n) for n in a.names()] for a in self._agencies.values()}

    def ids(self) -> list[str]:
        return list(self._agencies)

    def name(self, agency: str, lang: str) -> str:
        a = self._agencies.get(agency)
        return a.name.get(lang) if a else agency

    def short(self, agency: str, lang: str) -> str:
        a = self._agencies.get(agency)
        return a.short.get(lang) if a else agency

    def location_relevant(self, agency: str) -> bool:
        a = self._agencies.get(agency)
        return bool(a and a.location_relevant)

    def photo_relevant(self, agency: str) -> bool:
        a = self._agencies.get(agency)
        return bool(a and a.photo_relevant)

    def search(self, text: str) -> list[str]:
        """Agencies whose name, short name or an alias contains the query (or the query contains it)."""
        query = _fold(text)
        if len(query) < 2:
            return []
        exact = [aid for aid, forms in self._forms.items() if query in forms]
        if exact:
            return exact
        return [aid for aid, forms in self._forms.items()
                if any(query in f or (len(f) >= 3 and f in query) for f in forms)]
