"""Shared marshmallow pieces: text validation, envelopes, list metadata."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import marshmallow as ma

from app.core.text import (
    BIDI_CLASS,
    FORMAT_CLASS,
    LINE_CLASS,
    forbidden_format_char,
    format_char_message,
    normalise_email,
)

# Control characters (C0, DEL, C1); `multiline` text may hold tab, LF and CR. NUL would also
# break PostgreSQL text columns. Single-line text also refuses the Unicode line and paragraph
# separators (U+2028, U+2029), line breaks by another name.
_CTRL_MULTILINE = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_CTRL_ANY = r"\x00-\x1f\x7f-\x9f"
_CTRL_SINGLE_LINE = _CTRL_ANY + r"\u2028\u2029"
CONTROL_OR_SURROGATE = re.compile(f"[{_CTRL_ANY}\ud800-\udfff]")


class Text(ma.fields.String):
    """Printable text: no NUL or control characters, no lone surrogates, lengths checked on the
    value as sent (so the documented minLength/maxLength are exactly what is enforced). The value
    is then NFC-normalised and, with `strip`, trimmed; a required-non-empty field must hold more
    than white space. The same rules are published in the OpenAPI document as a `pattern`.

    Against spoofing, single-line text (names, titles) refuses every invisible format character
    (Unicode category Cf: bidi controls, zero-width characters, U+FEFF, ...) but a ZWJ or ZWNJ
    where a script needs it (the published pattern cannot say where, so it allows those two), and
    the line and paragraph separators; multi-line text (`multiline`: bios, bodies) refuses the bidi
    embeddings, overrides and isolates. With `check_format=False` (passwords, the login email)
    only the control-character rule applies: values chosen before these rules existed must keep
    working, and refusing characters in a secret someone already uses would only lock them out."""

    def __init__(
        self,
        *,
        max_length: int,
        min_length: int = 0,
        multiline: bool = False,
        strip: bool = True,
        check_format: bool = True,
        **kwargs: Any,
    ) -> None:
        self.min_length, self.max_length = min_length, max_length
        self.strip, self.multiline, self.check_format = strip, multiline, check_format
        if multiline:
            controls, formatting = _CTRL_MULTILINE, BIDI_CLASS
        else:
            controls, formatting = _CTRL_SINGLE_LINE if check_format else _CTRL_ANY, LINE_CLASS
        refused = controls + formatting if check_format else controls
        self._controls = re.compile(f"[{controls}]")
        metadata = {"minLength": min_length, "maxLength": max_length, **kwargs.pop("metadata", {})}
        validators = kwargs.get("validate") or []
        has_pattern = any(
            isinstance(v, ma.validate.Regexp)
            for v in (validators if isinstance(validators, list | tuple) else [validators])
        )
        if not has_pattern:
            if min_length > 0 and strip:  # something other than white space
                metadata["pattern"] = f"^[^{refused}]*[^\\s{refused}][^{refused}]*$"
            else:
                metadata["pattern"] = f"^[^{refused}]*$"
        super().__init__(metadata=metadata, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if self._controls.search(text):
            raise ma.ValidationError("Control characters are not allowed.")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ma.ValidationError("Not valid Unicode text.") from exc
        if not self.min_length <= len(text) <= self.max_length:
            raise ma.ValidationError(
                f"Length must be between {self.min_length} and {self.max_length}."
            )
        # After the length check: the joiner rule looks at neighbours, so its work is bounded.
        if self.check_format and (char := forbidden_format_char(text, multiline=self.multiline)):
            raise ma.ValidationError(format_char_message(char))
        text = unicodedata.normalize("NFC", text)
        if self.strip:
            text = text.strip()
        if len(text) > self.max_length:  # NFC can lengthen text: U+0958 becomes two characters
            raise ma.ValidationError(
                f"Length must be between {self.min_length} and {self.max_length}."
            )
        if self.min_length > 0 and not text.strip():
            raise ma.ValidationError("Must not be blank.")
        return text


class EmailText(ma.fields.Email):
    """An email address in its one form (`normalise_email`: NFKC, lower case) before it is
    validated, so a fullwidth `alice@example.com` (U+FF41...) is the ASCII one for the format
    check, the length check and uniqueness alike. Control and format characters are refused (the
    IDNA codec would silently drop a zero-width space in the domain), and so are lone surrogates
    (marshmallow's validator lets one through in the domain, which then fails to encode)."""

    def __init__(self, **kwargs: Any) -> None:
        pattern = f"^[^{_CTRL_ANY}{FORMAT_CLASS}]*$"
        super().__init__(metadata={"pattern": pattern, **kwargs.pop("metadata", {})}, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if CONTROL_OR_SURROGATE.search(text):
            raise ma.ValidationError("Not valid Unicode text.")
        if char := forbidden_format_char(text, multiline=False, address=True):
            raise ma.ValidationError(format_char_message(char))
        return normalise_email(text)


class StrictSchema(ma.Schema):
    """Request bodies: unknown fields are an error, not silently dropped."""

    class Meta:
        unknown = ma.RAISE


class PageMetaSchema(ma.Schema):
    page = ma.fields.Integer(metadata={"description": "Offset mode only."})
    per_page = ma.fields.Integer(required=True)
    total = ma.fields.Integer(metadata={"description": "Offset mode only."})
    total_is_estimate = ma.fields.Boolean(
        metadata={
            "description": "Offset mode only. Present, and true, only when `total` is an "
            "estimate (the database planner's, for lists above the server's exact-count limit); "
            "absent when `total` is exact."
        }
    )
    next_cursor = ma.fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "Pass as `?cursor=` for the next page; null on the last page."},
    )


def envelope_schema(name: str, item: type[ma.Schema], *, many: bool = False) -> type[ma.Schema]:
    """`{"data": item}` or, for lists, `{"data": [item], "meta": PageMeta}`."""
    fields: dict[str, Any] = {
        "data": ma.fields.List(ma.fields.Nested(item), required=True)
        if many
        else ma.fields.Nested(item, required=True)
    }
    if many:
        fields["meta"] = ma.fields.Nested(PageMetaSchema, required=True)
    return ma.Schema.from_dict(fields, name=name)


class JsonBoolean(ma.fields.Boolean):
    """true or false, as JSON spells them (not "yes", 1 or "on")."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise ma.ValidationError("Must be true or false.")
        return value
