"""PII scrubbing (seed §1.5 step 4): datatrove's e-mail and IP replacement plus phone numbers.

What is replaced (each with a fixed placeholder, cycled through the given replacements):

- **e-mail addresses** (datatrove's RFC-5322-like pattern);
- **public IPv4 addresses** (private, loopback and reserved ranges are kept unless
  ``only_remove_public_ips: false``); IPv6 is not matched;
- **phone numbers**:
  - international: ``+`` and a country code, then groups of digits separated by spaces, dots, dashes
    or a parenthesised area code, 8 to 15 digits in all (E.164's range): ``+1 415 555 2671``,
    ``+44 (0)20 7946 0958``, ``+33 6 12 34 56 78``, ``+4930123456``;
  - national: a parenthesised area code then two groups (``(415) 555-2671``); or two to five groups of
    digits separated by one kind of separator, 9 to 12 digits in all, starting with a 0 (the trunk
    prefix of most national plans: ``020 7946 0958``, ``06 12 34 56 78``, ``030 12345678``,
    ``0171 1234567``); or the North-American 3-3-4 form (``415-555-2671``, ``415.555.2671``).

What is NOT replaced, on purpose (each would destroy too much ordinary text): digit runs without
separators (order numbers, IDs; ``+`` numbers excepted), dates (``2024-01-15``: 8 digits), times,
version numbers, amounts, dotted quads that are IPv4 addresses (the IP rule decides those), and
everything that is not one of the three kinds: names, postal addresses, credit-card and account
numbers, national IDs, IPv6 and MAC addresses, URLs.
"""

from __future__ import annotations

import re

from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.formatters.pii import PIIReplacer

PHONE_REPLACEMENT = ("+1 555 010 0000",)
"""A number of the 555-01xx block, reserved for fiction."""

_INTERNATIONAL = r"\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){2,6}"
_PAREN_AREA = r"\(\d{2,4}\)[ .-]?\d{3,4}[ .-]\d{3,4}"
_GROUPS = r"\d{2,5}(?P<sep>[ .-])\d{2,8}(?:(?P=sep)\d{2,8}){0,3}"
PHONE_RE = re.compile(rf"(?<![\w+.-])(?:{_INTERNATIONAL}|{_PAREN_AREA}|{_GROUPS})(?![\w-]|\.\d)")
_NANP = re.compile(r"\d{3}([ .-])\d{3}\1\d{4}")
_DOTTED_QUAD = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def is_phone_number(text: str) -> bool:
    """Whether a candidate match is a phone number by the rules in the module docstring."""
    digits = sum(c.isdigit() for c in text)
    if text.startswith("+"):
        return 8 <= digits <= 15
    if text.startswith("("):
        return 9 <= digits <= 12
    if _DOTTED_QUAD.fullmatch(text) or not 9 <= digits <= 12:
        return False
    return text.startswith("0") or bool(_NANP.fullmatch(text))


class PhonePIIFormatter(PIIFormatter):
    """datatrove's ``PIIFormatter`` (e-mails, public IPs) plus phone numbers (``remove_phones``)."""

    name = "📞 PII"

    def __init__(
        self,
        *args: object,
        remove_phones: bool = True,
        phone_replacement: tuple[str, ...] | str = PHONE_REPLACEMENT,
        **kwargs: object,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.remove_phones = remove_phones
        self.phone_replacer = PIIReplacer(PHONE_RE.pattern, phone_replacement, validator=is_phone_number)

    def format(self, text: str) -> str:
        text = super().format(text)  # IPs first: a public IP is never read as a phone number
        if self.remove_phones:
            text = self.phone_replacer.replace(text)
        return text
