"""
How many SMS parts a text needs, the way carriers and Clickatell count them.

A text that fits the GSM 03.38 alphabet is sent in 7-bit septets: 160 per
single message, 153 per part once it must be split (the user data header
takes the rest). Anything else goes as UCS-2: 70 UTF-16 code units, or 67
per part. Characters of the GSM extension table take two septets, and
neither an escape pair nor a surrogate pair is ever split across parts.
"""

from __future__ import annotations

__all__ = ["GSM7_BASIC", "GSM7_EXTENDED", "is_gsm7", "sms_parts"]

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
"""
Characters of the GSM 03.38 default alphabet (one septet each).
"""

GSM7_EXTENDED = frozenset("\f^{}\\[~]|€")
"""
Characters of the GSM 03.38 extension table (an escape plus one septet).
"""

_GSM7_SINGLE = 160
_GSM7_PART = 153
_UCS2_SINGLE = 70
_UCS2_PART = 67


def is_gsm7(text: str) -> bool:
    """
    Tell whether *text* can be sent in the GSM 7-bit alphabet.
    """
    return all(c in GSM7_BASIC or c in GSM7_EXTENDED for c in text)


def sms_parts(text: str) -> int:
    """
    Count the SMS parts needed to send *text*.

    An empty text counts as one part: it is still one message to bill.

    Args:
        text: The message body, as the sender would pass it.

    Returns:
        The number of parts, at least 1.
    """
    if is_gsm7(text):
        units = [2 if c in GSM7_EXTENDED else 1 for c in text]
        single, part = _GSM7_SINGLE, _GSM7_PART
    else:
        # Characters beyond the BMP are a surrogate pair in UCS-2/UTF-16.
        units = [2 if ord(c) > 0xFFFF else 1 for c in text]
        single, part = _UCS2_SINGLE, _UCS2_PART
    if sum(units) <= single:
        return 1
    parts, used = 1, 0
    for size in units:
        # A two-unit character that does not fit starts the next part whole.
        if used + size > part:
            parts += 1
            used = 0
        used += size
    return parts
