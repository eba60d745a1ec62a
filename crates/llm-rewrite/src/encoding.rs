//! Request bodies may arrive compressed (`Content-Encoding`); they are read decoded and, when
//! rewritten, forwarded identity-encoded (the caller drops the header and sets the length).

use std::borrow::Cow;
use std::io::Read;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("Content-Encoding {0:?} is not one ghostwire reads (gzip, deflate, identity)")]
    Unsupported(String),
    #[error("Content-Encoding {encoding:?}: the body does not decode: {source}")]
    Corrupt {
        encoding: String,
        source: std::io::Error,
    },
}

/// Upper bound on a decoded body, so a small compressed bomb cannot take the proxy's memory.
pub const MAX_DECODED: u64 = 16 * 1024 * 1024;

pub fn decode<'a>(
    content_encoding: Option<&str>,
    body: &'a [u8],
) -> Result<Cow<'a, [u8]>, DecodeError> {
    let enc = content_encoding.unwrap_or("").trim().to_ascii_lowercase();
    let corrupt = |source| DecodeError::Corrupt {
        encoding: enc.clone(),
        source,
    };
    let mut out = Vec::new();
    match enc.as_str() {
        "" | "identity" => return Ok(Cow::Borrowed(body)),
        "gzip" | "x-gzip" => {
            flate2::read::MultiGzDecoder::new(body)
                .take(MAX_DECODED + 1)
                .read_to_end(&mut out)
                .map_err(corrupt)?;
        }
        // RFC 9110's "deflate" is zlib; some clients send raw deflate, so both are read.
        "deflate" => {
            if flate2::read::ZlibDecoder::new(body)
                .take(MAX_DECODED + 1)
                .read_to_end(&mut out)
                .is_err()
            {
                out.clear();
                flate2::read::DeflateDecoder::new(body)
                    .take(MAX_DECODED + 1)
                    .read_to_end(&mut out)
                    .map_err(corrupt)?;
            }
        }
        other => return Err(DecodeError::Unsupported(other.to_string())),
    }
    if out.len() as u64 > MAX_DECODED {
        return Err(corrupt(std::io::Error::other(format!(
            "decodes to more than {MAX_DECODED} bytes"
        ))));
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzip_deflate_and_identity() {
        assert_eq!(&*decode(Some("gzip"), &gzip(b"{}")).unwrap(), b"{}");
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(b"zlib").unwrap();
        assert_eq!(
            &*decode(Some("deflate"), &z.finish().unwrap()).unwrap(),
            b"zlib"
        );
        let mut d = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        d.write_all(b"raw").unwrap();
        assert_eq!(
            &*decode(Some("Deflate"), &d.finish().unwrap()).unwrap(),
            b"raw"
        );
        assert!(matches!(decode(None, b"x").unwrap(), Cow::Borrowed(b"x")));
    }

    #[test]
    fn unknown_corrupt_and_oversized_bodies_are_errors() {
        assert!(
            decode(Some("br"), b"x")
                .unwrap_err()
                .to_string()
                .contains("\"br\"")
        );
        assert!(matches!(
            decode(Some("gzip"), b"not gzip"),
            Err(DecodeError::Corrupt { .. })
        ));
        let bomb = gzip(&vec![0u8; (MAX_DECODED + 10) as usize]);
        assert!(
            decode(Some("gzip"), &bomb)
                .unwrap_err()
                .to_string()
                .contains("more than")
        );
    }
}
