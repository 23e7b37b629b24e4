//! A guard in front of the multipart parser: a part whose headers run past
//! [`MAX_PART_HEADER_BYTES`] without ending is refused as soon as that many bytes have arrived.
//! The parser (multer) buffers a part's headers up to the body limit and scans them again from the
//! start on every chunk, so without this a trickled 8 MiB header costs quadratic time; here each
//! byte of the body is looked at once, and nothing is buffered.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use futures::StreamExt;
use memchr::memmem::Finder;

/// Longest headers one part may have (name, file name, content type and any others).
pub const MAX_PART_HEADER_BYTES: usize = 8 << 10;

/// Passes the body of a `multipart/form-data` request through a [`Scanner`]; other requests go
/// through untouched (the handler refuses them).
pub async fn guard(request: Request) -> Request {
    let Some(boundary) = request
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| multer::parse_boundary(v).ok())
    else {
        return request;
    };
    request.map(|body| {
        let mut scanner = Scanner::new(&boundary);
        Body::from_stream(body.into_data_stream().map(move |chunk| {
            let chunk = chunk?;
            scanner.feed(&chunk)?;
            Ok::<Bytes, axum::BoxError>(chunk)
        }))
    })
}

/// The error the body stream fails with; the upload handler finds it among the parser error's
/// sources and answers `400 part-header-too-large`.
#[derive(Debug, thiserror::Error)]
#[error("a part's headers run past {MAX_PART_HEADER_BYTES} bytes")]
pub struct PartHeadersTooLong;

/// Where a multipart body stands, fed chunk by chunk.
pub struct Scanner {
    /// `\r\n--boundary`: what starts every part (the first one's `\r\n` is implied).
    delimiter: Finder<'static>,
    /// The end of the previous chunk, for a delimiter split between two chunks.
    carry: Vec<u8>,
    /// `Some(bytes of headers so far, the last four bytes)` inside a part's headers.
    headers: Option<(usize, [u8; 4])>,
    /// Past the closing delimiter (`--boundary--`): what follows is an epilogue, not a part.
    ended: bool,
}

impl Scanner {
    pub fn new(boundary: &str) -> Scanner {
        let delimiter = format!("\r\n--{boundary}").into_bytes();
        // The body may start with the delimiter without the line break before it.
        Scanner {
            delimiter: Finder::new(&delimiter).into_owned(),
            carry: b"\r\n".to_vec(),
            headers: None,
            ended: false,
        }
    }

    /// Looks at the next piece of the body.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), PartHeadersTooLong> {
        let mut rest = chunk;
        while !rest.is_empty() && !self.ended {
            if let Some((seen, last)) = &mut self.headers {
                // Headers: byte by byte, at most MAX_PART_HEADER_BYTES of them per part.
                let mut head_end = None;
                for (i, &b) in rest.iter().enumerate() {
                    *last = [last[1], last[2], last[3], b];
                    *seen += 1;
                    if *seen == 2 && last[2..] == *b"--" {
                        // `--boundary--`: the body's end.
                        self.ended = true;
                        return Ok(());
                    }
                    if *last == *b"\r\n\r\n" {
                        head_end = Some(i + 1);
                        break;
                    }
                    if *seen > MAX_PART_HEADER_BYTES {
                        return Err(PartHeadersTooLong);
                    }
                }
                match head_end {
                    Some(at) => {
                        self.headers = None;
                        self.carry.clear();
                        rest = &rest[at..];
                    }
                    None => return Ok(()),
                }
            } else {
                // Content: find the next delimiter, possibly begun at the end of the last chunk.
                let needle = self.delimiter.needle().len();
                let head = &rest[..rest.len().min(needle - 1)];
                let mut joined = std::mem::take(&mut self.carry);
                let carried = joined.len();
                joined.extend_from_slice(head);
                let found = match self.delimiter.find(&joined) {
                    // Only a delimiter that uses the carry counts here; one inside `head` is
                    // found again below, in `rest`.
                    Some(at) if at < carried => Some(at + needle - carried),
                    _ => self.delimiter.find(rest).map(|at| at + needle),
                };
                match found {
                    Some(after) => {
                        // The delimiter's line break and the part's headers follow (or `--`, the
                        // end, whose few bytes also fit under the header limit).
                        self.headers = Some((0, [0; 4]));
                        rest = &rest[after..];
                    }
                    None => {
                        // Keep the last bytes seen, for a delimiter split between two chunks.
                        let keep = needle - 1;
                        if rest.len() >= keep {
                            self.carry = rest[rest.len() - keep..].to_vec();
                        } else {
                            joined.truncate(carried);
                            joined.extend_from_slice(rest);
                            joined.drain(..joined.len().saturating_sub(keep));
                            self.carry = joined;
                        }
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(header: usize) -> Vec<u8> {
        let mut body =
            b"--XyZ\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nvalue with --XyZ no break\r\n".to_vec();
        body.extend_from_slice(
            b"--XyZ\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\nX-Pad: ",
        );
        body.extend(std::iter::repeat_n(b'a', header));
        body.extend_from_slice(b"\r\n\r\n\x89PNG....\r\n--XyZ--\r\n");
        body
    }

    fn scan(body: &[u8], chunk: usize) -> Result<(), PartHeadersTooLong> {
        let mut scanner = Scanner::new("XyZ");
        body.chunks(chunk).try_for_each(|c| scanner.feed(c))
    }

    #[test]
    fn headers_under_the_limit_pass_whatever_the_chunking() {
        for chunk in [1, 2, 3, 5, 7, 64, 4096, 1 << 20] {
            assert!(scan(&body(8_000), chunk).is_ok(), "chunks of {chunk}");
        }
    }

    #[test]
    fn headers_over_the_limit_are_refused_whatever_the_chunking() {
        for chunk in [1, 2, 3, 5, 7, 64, 4096, 1 << 20] {
            assert!(scan(&body(8_300), chunk).is_err(), "chunks of {chunk}");
        }
    }

    #[test]
    fn refused_once_the_limit_is_passed_before_the_rest_arrives() {
        let mut scanner = Scanner::new("XyZ");
        let start = b"--XyZ\r\nX-Long: ";
        scanner.feed(start).unwrap();
        // Counted from the line break after the boundary: one byte past the limit in all.
        let pad = vec![b'a'; MAX_PART_HEADER_BYTES + 1 - (start.len() - "--XyZ".len())];
        scanner.feed(&pad[..pad.len() - 1]).unwrap();
        assert!(scanner.feed(&pad[pad.len() - 1..]).is_err(), "the byte past the limit");
    }

    #[test]
    fn content_of_any_size_between_delimiters_is_not_counted() {
        let mut body = b"--XyZ\r\nContent-Type: image/png\r\n\r\n".to_vec();
        body.extend(std::iter::repeat_n(b'x', 1 << 20));
        body.extend_from_slice(b"\r\n--XyZ--\r\n");
        for chunk in [1, 13, 65536] {
            assert!(scan(&body, chunk).is_ok(), "chunks of {chunk}");
        }
    }

    #[test]
    fn an_epilogue_after_the_closing_delimiter_is_not_a_header() {
        let mut body = body(100);
        body.extend(std::iter::repeat_n(b'e', 64 << 10));
        for chunk in [1, 5, 4096] {
            assert!(scan(&body, chunk).is_ok(), "chunks of {chunk}");
        }
    }
}
