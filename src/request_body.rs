//! A client's request body as the pipeline reads it.
//!
//! Usually still arriving on the connection. A request whose body
//! `proxy/at_once.rs` read whole to look for a hit, and did not find one,
//! enters the pipeline with that body already read: the bytes cannot be
//! put back into the connection, and reading them again would wait for
//! nothing.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::body_deadline::DeadlineBody;

/// A client's request body, held to its deadline (`body_deadline.rs`).
pub type RequestBody = DeadlineBody<ClientBody>;

/// Where a request's body comes from.
#[derive(Debug)]
pub enum ClientBody {
    /// Still on the connection.
    Arriving(Incoming),
    /// Read whole before the pipeline took the request; `None` once given.
    Read(Option<Bytes>),
}

impl ClientBody {
    /// A body already read: one data frame, none when it is empty.
    pub fn read(bytes: Bytes) -> Self {
        Self::Read((!bytes.is_empty()).then_some(bytes))
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Arriving(incoming) => Pin::new(incoming).poll_frame(cx),
            Self::Read(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Arriving(incoming) => incoming.is_end_stream(),
            Self::Read(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Arriving(incoming) => incoming.size_hint(),
            Self::Read(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn a_body_read_before_is_given_once_whole() {
        const FILTERS: &[u8] = b"{\"region\":\"eu\"}";
        let mut body = ClientBody::read(Bytes::from_static(FILTERS));
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(FILTERS.len() as u64));
        let frame = body.frame().await.expect("one frame").expect("no error");
        assert_eq!(frame.into_data().unwrap(), FILTERS);
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none(), "then the end");
    }

    #[tokio::test]
    async fn an_empty_body_read_before_has_ended() {
        let body = ClientBody::read(Bytes::new());
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }
}
