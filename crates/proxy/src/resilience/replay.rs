//! A request body of unknown length (every gRPC call, any chunked upload) recorded as it is
//! sent, so that the request may go again once it has been sent whole.
//!
//! Waiting for such a body to end before sending it would hang a caller that waits for
//! the answer before it sends more (a bidirectional gRPC stream); so the first try streams
//! it as it comes, and a copy is kept on the side, up to [`super::retry::MAX_REPLAY_BODY`].
//! A retry is possible only if the body ended within that bound, without trailers, by the
//! time the retry is wanted; otherwise the request is not retried (counted as denied,
//! `body`), so that no backend ever receives part of a body twice.

use super::retry::MAX_REPLAY_BODY;
use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

/// What has gone out of a body so far.
#[derive(Debug, Default)]
pub struct Recording {
    chunks: Vec<Bytes>,
    len: u64,
    /// The body ended (its last frame went out).
    complete: bool,
    /// Longer than the bound, with trailers, or broken: it cannot be sent again.
    spoiled: bool,
}

impl Recording {
    /// The whole body, if it went out whole and may go again.
    pub fn replay(&self) -> Option<Bytes> {
        if !self.complete || self.spoiled {
            return None;
        }
        let mut all = BytesMut::with_capacity(self.len as usize);
        for chunk in &self.chunks {
            all.extend_from_slice(chunk);
        }
        Some(all.freeze())
    }
}

pub type Shared = Arc<Mutex<Recording>>;

pin_project! {
    /// A peer's body passed on frame by frame, recorded on the way.
    #[derive(Debug)]
    pub struct TeeBody {
        #[pin]
        inner: Incoming,
        recording: Shared,
    }
}

impl TeeBody {
    pub fn new(inner: Incoming) -> (Self, Shared) {
        let recording = Shared::default();
        (Self { inner, recording: recording.clone() }, recording)
    }
}

fn lock(m: &Mutex<Recording>) -> std::sync::MutexGuard<'_, Recording> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl HttpBody for TeeBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let Poll::Ready(frame) = &polled else { return polled };
        let mut recording = lock(this.recording);
        match frame {
            Some(Ok(frame)) => {
                match frame.data_ref() {
                    Some(data) if !recording.spoiled => {
                        if recording.len + data.len() as u64 > MAX_REPLAY_BODY {
                            recording.spoiled = true;
                            recording.chunks = Vec::new();
                        } else {
                            recording.len += data.len() as u64;
                            recording.chunks.push(data.clone());
                        }
                    }
                    Some(_) => {}
                    // Trailers are rare on requests; such a body is not sent again.
                    None => recording.spoiled = true,
                }
                // A sender stops polling once the body says it has ended.
                if this.inner.is_end_stream() {
                    recording.complete = true;
                }
            }
            None => recording.complete = true,
            Some(Err(_)) => recording.spoiled = true,
        }
        drop(recording);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
