"""Phone numbers in E.164, parsed with Google's libphonenumber rules (the `phonenumbers` package)."""

from __future__ import annotations

import phonenumbers

from app.errors import InvalidInput


class InvalidPhoneNumber(InvalidInput):
    code = "invalid_phone_number"
    default_detail = "The phone number is not valid."


def normalize_e164(raw: str, *, region: str | None = None, field: str = "number") -> str:
    """`raw` as E.164 (`+14155550100`); national formats need `region` (ISO 3166, e.g. "US").

    `+1 (415) 555-0100`, `+1-415-555-0100` and `+14155550100` are the same number.
    """
    text = raw.strip()
    if not text or len(text) > 40:
        raise InvalidPhoneNumber(f"{field}: {raw!r} is not a phone number.")
    try:
        parsed = phonenumbers.parse(text, region.upper() if region else None)
    except phonenumbers.NumberParseException as exc:
        hint = "" if text.startswith("+") or region else " (use +<country code>… or give a region)"
        raise InvalidPhoneNumber(f"{field}: {raw!r} is not a phone number{hint}.") from exc
    if not phonenumbers.is_valid_number(parsed):
        raise InvalidPhoneNumber(f"{field}: {raw!r} is not a valid phone number.")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
