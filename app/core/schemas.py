"""Shared marshmallow pieces: text validation, envelopes, list metadata."""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import marshmallow as ma

# Control characters (C0, DEL, C1); `multiline` text may hold tab, LF and CR. NUL would also
# break PostgreSQL text columns.
_CTRL_MULTILINE = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_CTRL_ANY = r"\x00-\x1f\x7f-\x9f"
CONTROL_OR_SURROGATE = re.compile(f"[{_CTRL_ANY}\ud800-\udfff]")


class Text(ma.fields.String):
    """Printable text: no NUL or control characters, no lone surrogates, lengths checked on the
    value as sent (so the documented minLength/maxLength are exactly what is enforced). The value
    is then NFC-normalised and, with `strip`, trimmed; a required-non-empty field must hold more
    than white space. The same rules are published in the OpenAPI document as a `pattern`."""

    def __init__(
        self,
        *,
        max_length: int,
        min_length: int = 0,
        multiline: bool = False,
        strip: bool = True,
        **kwargs: Any,
    ) -> None:
        self.min_length, self.max_length = min_length, max_length
        self.strip = strip
        controls = _CTRL_MULTILINE if multiline else _CTRL_ANY
        self._controls = re.compile(f"[{controls}]")
        metadata = {"minLength": min_length, "maxLength": max_length, **kwargs.pop("metadata", {})}
        validators = kwargs.get("validate") or []
        has_pattern = any(
            isinstance(v, ma.validate.Regexp)
            for v in (validators if isinstance(validators, list | tuple) else [validators])
        )
        if not has_pattern:
            if min_length > 0 and strip:  # something other than white space
                metadata["pattern"] = f"^[^{controls}]*[^\\s{controls}][^{controls}]*$"
            else:
                metadata["pattern"] = f"^[^{controls}]*$"
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
