//! gzip, the one content coding besides identity that every protocol here speaks, written once:
//! which coding a request names and which one to answer in, compression, and decompression within
//! `--max-message-size` (a bomb is never inflated whole). Each protocol names the coding in its own
//! header (`grpc-encoding`, `connect-content-encoding`, `content-encoding`) and words its own errors
//! from [`Gunzip`].

use std::io::{Read as _, Write as _};

use bytes::Bytes;
use tonic::Status;

use crate::limits::too_large;

/// A content coding this server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    Identity,
    Gzip,
}

impl Encoding {
    /// The coding a request names (`content-encoding`, `connect-content-encoding`, `compression=`);
    /// none is identity, an unknown one UNIMPLEMENTED as Connect asks.
    pub(crate) fn parse(name: Option<&str>) -> Result<Encoding, Status> {
        match name.map(|n| n.trim().to_ascii_lowercase()).as_deref() {
            None | Some("") | Some("identity") => Ok(Encoding::Identity),
            Some("gzip") => Ok(Encoding::Gzip),
            Some(other) => Err(Status::unimplemented(format!(
                "content encoding '{other}' is not supported (supported: gzip, identity)"
            ))),
        }
    }

    /// The coding to answer in: gzip when an accept list names it with a
    /// nonzero weight (`gzip;q=0.0` refuses it), the request's own
    /// coding when there is no list, else identity.
    pub(crate) fn accepted(accept: Option<&str>, request: Encoding) -> Encoding {
        let Some(list) = accept else {
            return request;
        };
        let gzip = list.split(',').any(|item| {
            let mut parts = item.split(';').map(str::trim);
            parts.next().is_some_and(|c| c.eq_ignore_ascii_case("gzip"))
                && !parts.any(|p| {
                    let Some((name, value)) = p.split_once('=') else {
                        return false;
                    };
                    name.trim().eq_ignore_ascii_case("q")
                        && value.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
                })
        });
        if gzip {
            Encoding::Gzip
        } else {
            Encoding::Identity
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
        }
    }

    /// Decompresses `data`; more than `limit` bytes once decompressed is RESOURCE_EXHAUSTED. Empty
    /// content is never decompressed (Connect's rule).
    pub(crate) fn decompress(self, data: Bytes, limit: usize) -> Result<Bytes, Status> {
        if self == Encoding::Identity || data.is_empty() {
            return Ok(data);
        }
        match gunzip_within(&data, limit) {
            Ok(out) => Ok(out.into()),
            Err(Gunzip::Corrupt(e)) => Err(Status::invalid_argument(format!(
                "request is not valid gzip: {e}"
            ))),
            Err(Gunzip::TooLarge(_)) => Err(too_large("decompressed request", limit)),
        }
    }

    pub(crate) fn compress(self, data: Vec<u8>) -> Vec<u8> {
        match self {
            Encoding::Identity => data,
            Encoding::Gzip => {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(data.len() / 2 + 32),
                    flate2::Compression::fast(),
                );
                // Writing into a Vec cannot fail.
                let _ = encoder.write_all(&data);
                encoder.finish().unwrap_or_default()
            }
        }
    }
}

/// Why gzip content could not be read within a limit.
pub(crate) enum Gunzip {
    Corrupt(std::io::Error),
    /// More than the limit once decompressed (the length read: the limit + 1 at most, a bomb is
    /// never inflated whole).
    TooLarge(usize),
}

/// The most deflate can inflate: 258 bytes from every 2 bits (zlib's technical notes say 1032:1).
const MAX_DEFLATE_RATIO: usize = 1032;

/// Decompresses gzip `data`, reading at most one byte past `limit`. Each protocol answers the
/// failures with its own status.
pub(crate) fn gunzip_within(data: &[u8], limit: usize) -> Result<Vec<u8>, Gunzip> {
    // One buffer of the right size instead of a doubling one, whose copies would hold up to three
    // times the message at once: gzip's trailer says the inflated length (mod 2^32). Untrusted, so
    // capped by the limit and by deflate's largest ratio (1032:1); a wrong one only costs a regrowth.
    let stated = data
        .last_chunk::<4>()
        .map_or(0, |trailer| u32::from_le_bytes(*trailer) as usize);
    let capacity = stated
        .min(limit.saturating_add(1))
        .min(data.len().saturating_mul(MAX_DEFLATE_RATIO));
    let mut out = Vec::with_capacity(capacity);
    flate2::read::GzDecoder::new(data)
        .take((limit as u64).saturating_add(1))
        .read_to_end(&mut out)
        .map_err(Gunzip::Corrupt)?;
    if out.len() > limit {
        return Err(Gunzip::TooLarge(out.len()));
    }
    Ok(out)
}
