from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from guard._sms import GSM7_BASIC, GSM7_EXTENDED, is_gsm7, sms_parts


class TestSmsParts:
    @pytest.mark.parametrize(
        ("text", "parts"),
        [
            ("", 1),
            ("a", 1),
            ("a" * 160, 1),
            ("a" * 161, 2),
            ("a" * 306, 2),
            ("a" * 307, 3),
            ("€" * 80, 1),
            ("€" * 81, 2),
            ("a" * 152 + "€" + "a" * 10, 2),
            ("é" * 160, 1),
            ("ç" * 70, 1),
            ("ç" * 71, 2),
            ("ç" * 134, 2),
            ("ç" * 135, 3),
            ("😀" * 35, 1),
            ("😀" * 36, 2),
            ("a" * 66 + "😀" + "ç" * 3, 2),
            ("a" * 66 + "😀" + "a" * 66, 3),
        ],
    )
    def test_parts(self, text: str, parts: int) -> None:
        """GSM-7 counts septets (160/153), anything else UTF-16 units (70/67)."""
        assert parts == sms_parts(text)

    def test_escape_pair_not_split(self) -> None:
        """An extension character that would straddle two parts starts the next."""
        # 152 septets, then a 2-septet character: it cannot end part one.
        text = "a" * 152 + "€" + "a" * 152

        assert 3 == sms_parts(text)

    def test_alphabet(self) -> None:
        """The GSM alphabet has 127 characters plus 10 extension ones."""
        assert (127, 10) == (len(GSM7_BASIC), len(GSM7_EXTENDED))
        assert is_gsm7("Hello {world} £5 @ 10€")
        assert not is_gsm7("ç")

    @given(st.text(max_size=600))
    def test_bounds(self, text: str) -> None:
        """Parts grow with length and never undercount the payload."""
        parts = sms_parts(text)

        assert parts >= 1
        assert parts <= max(1, len(text))
