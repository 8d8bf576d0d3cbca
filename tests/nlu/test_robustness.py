"""Property test: the engine returns a well-formed result for any input and never raises."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nlu.engine import EmbeddedEngine
from nlu.types import CaseType, Intent, Language, NLUResult

_odd_text = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
    st.text(alphabet=st.characters(min_codepoint=0x0600, max_codepoint=0x06FF), max_size=200),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Mn", "So", "Co", "Cs"]), max_size=200),
    st.binary(max_size=300).map(lambda b: b.decode("latin-1")),
    st.binary(max_size=300).map(lambda b: b.decode("utf-8", errors="surrogateescape")),
    st.sampled_from(["", " ", "\n\n\t", "😡" * 50, "🙏🏽👍🏻", "\x00" * 10, "ـــــ", "TWS-" * 40, "٣" * 40]),
)


def _well_formed(result: NLUResult, text: str) -> None:
    assert isinstance(result, NLUResult) and result.text == text
    assert isinstance(result.language, Language) and isinstance(result.intent, Intent)
    assert result.type is None or isinstance(result.type, CaseType)
    assert (result.type is None) or result.intent is Intent.FILE_CASE
    for conf in (result.intent_confidence, result.type_confidence, result.agency_confidence):
        assert 0.0 <= conf <= 1.0
    assert len(result.agency_candidates) <= 3
    for e in result.entities:
        assert 0 <= e.start < e.end <= len(text)
    result.to_dict()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=_odd_text)
def test_any_text(engine: EmbeddedEngine, text: str) -> None:
    _well_formed(engine.parse_sync(text), text)


def test_huge_inputs(engine: EmbeddedEngine) -> None:
    for text in (
        "الماي مقطوع " * 10_000,  # 120,000 characters
        "a" * 100_000,
        "".join(chr(c) for c in range(0x20, 0x2FFFF) if not 0xD800 <= c <= 0xDFFF)[:100_000],
        "1" * 100_000,
        " " * 100_000,
    ):
        result = engine.parse_sync(text)
        _well_formed(result, text)


def test_not_even_a_string(engine: EmbeddedEngine) -> None:
    result = engine.parse_sync(None)  # type: ignore[arg-type]
    assert isinstance(result, NLUResult)
