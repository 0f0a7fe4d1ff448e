//! Request metadata as handlers see it (`when.metadata`, `{{metadata.KEY}}`; scripts' `metadata`
//! map has the same text). A text key gives its value. A binary key (`-bin`) gives its bytes as
//! base64 — the standard alphabet, padded, whatever padding the client sent (tonic sends none,
//! grpc-go and browsers pad) — the form a handler's own `-bin` headers are written in, so a value
//! can be matched, shown and echoed as it is; where a template puts it whole into a `bytes` field,
//! the decoded bytes. The first value of a repeated key counts.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use tonic::metadata::MetadataMap;

/// Whether `key` carries bytes (gRPC's `-bin` suffix).
pub(crate) fn is_binary(key: &str) -> bool {
    key.ends_with("-bin")
}

/// The value of `key` as text (binary keys in padded base64); `None` when the call has none.
pub(crate) fn text<'m>(metadata: &'m MetadataMap, key: &str) -> Option<Cow<'m, str>> {
    if is_binary(key) {
        let value = metadata.get_bin(key)?;
        return Some(Cow::Owned(match value.to_bytes() {
            Ok(bytes) => STANDARD.encode(bytes),
            // Not base64 at all: shown as it came, so that a condition can still see it.
            Err(_) => String::from_utf8_lossy(value.as_encoded_bytes()).into_owned(),
        }));
    }
    let value = metadata.get(key)?;
    Some(String::from_utf8_lossy(value.as_bytes()))
}

/// The decoded bytes of a binary key; `None` for a text key, a missing one, or one not in base64.
pub(crate) fn bytes(metadata: &MetadataMap, key: &str) -> Option<Bytes> {
    if !is_binary(key) {
        return None;
    }
    metadata.get_bin(key)?.to_bytes().ok()
}

/// A `-bin` value written in a handler (a `when.metadata` equality), in the form [`text`] gives:
/// padded; `None` when it is not base64.
pub(crate) fn normalized_base64(value: &str) -> Option<String> {
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    lenient.decode(value).ok().map(|b| STANDARD.encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::{BinaryMetadataValue, MetadataValue};

    #[test]
    fn binary_values_are_padded_base64_and_text_values_as_they_are() {
        let mut md = MetadataMap::new();
        md.insert_bin("x-t-bin", BinaryMetadataValue::from_bytes(b"hi"));
        md.insert("x-user", MetadataValue::from_static("tom"));
        assert_eq!(text(&md, "x-t-bin").as_deref(), Some("aGk="));
        assert_eq!(bytes(&md, "x-t-bin").as_deref(), Some(&b"hi"[..]));
        assert_eq!(text(&md, "x-user").as_deref(), Some("tom"));
        assert_eq!(bytes(&md, "x-user"), None);
        assert_eq!(text(&md, "x-none-bin"), None);
        assert_eq!(normalized_base64("aGk").as_deref(), Some("aGk="));
        assert_eq!(normalized_base64("aGk=").as_deref(), Some("aGk="));
        assert_eq!(normalized_base64("not base64!"), None);
    }
}
