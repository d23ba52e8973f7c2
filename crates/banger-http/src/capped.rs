//! Reading an HTTP body that a peer chose, up to a limit: shared by every banger endpoint that
//! reads from something it does not trust (the agent client, the Firecracker API client, the
//! daemon's request bodies).

use std::error::Error;

use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::HeaderMap;
use hyper::body::{Body, Bytes};
use hyper::header::CONTENT_LENGTH;

/// Why a capped body was not read.
#[derive(Debug)]
pub enum CappedError {
    /// Longer than the limit; `declared` is its `Content-Length`, when it announced one.
    TooLarge { declared: Option<u64> },
    /// The body failed before its end (connection closed, bad chunk...).
    Read(Box<dyn Error + Send + Sync>),
}

/// Reads `body` whole, refusing it once it passes `limit` bytes: at once, unread, when
/// `headers` announce a longer `Content-Length`; else as soon as the bytes read pass the limit,
/// so no more than `limit` bytes (plus one frame) are ever held.
pub async fn read_capped<B>(
    headers: &HeaderMap,
    body: B,
    limit: usize,
) -> Result<Bytes, CappedError>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(CappedError::TooLarge { declared });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(CappedError::TooLarge { declared }),
        Err(e) => Err(CappedError::Read(e)),
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::Full;

    use super::*;

    fn with_length(n: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, n.to_string().parse().unwrap());
        h
    }

    #[tokio::test]
    async fn reads_up_to_the_limit() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        let got = read_capped(&HeaderMap::new(), body, 10).await.unwrap();
        assert_eq!(got.as_ref(), b"0123456789");
    }

    #[tokio::test]
    async fn refuses_a_longer_body_and_an_announced_one() {
        let body = Full::new(Bytes::from_static(b"0123456789a"));
        let err = read_capped(&HeaderMap::new(), body, 10).await.unwrap_err();
        assert!(
            matches!(err, CappedError::TooLarge { declared: None }),
            "{err:?}"
        );
        // Announced: refused without looking at the body.
        let body = Full::new(Bytes::new());
        let err = read_capped(&with_length(1 << 40), body, 10)
            .await
            .unwrap_err();
        assert!(
            matches!(err, CappedError::TooLarge { declared: Some(n) } if n == 1 << 40),
            "{err:?}"
        );
    }
}
