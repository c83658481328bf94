//! A response body that records the response's outcome when it ends.
//!
//! The status code is known at the response head, but a gRPC call's outcome arrives in its
//! trailers, so classification waits for the end of the body (or its drop, for a client
//! that went away).

use super::Body;
use crate::metrics::{Classification, RouteLabel, TargetMetrics};
use crate::tap::{Tap, TapStart};
use crate::telemetry::RequestRecord;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pin_project! {
    pub struct Metered {
        #[pin]
        inner: Body,
        recorder: Recorder,
    }
}

struct Recorder {
    metrics: Option<Arc<TargetMetrics>>,
    route: RouteLabel,
    status: u16,
    grpc: bool,
    grpc_status: Option<u32>,
    failed: bool,
    tap: Option<Box<TapRecord>>,
    /// A traced or logged request's record, finished at the body's end.
    telemetry: Option<Box<RequestRecord>>,
}

/// What a tapped request needs at its end to publish its event.
pub struct TapRecord {
    pub tap: Arc<Tap>,
    pub start: TapStart,
    pub direction: &'static str,
    pub target: Arc<String>,
}

impl Metered {
    // Each argument is a different watcher of the response's end; bundling them would
    // only move the list.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        inner: Body,
        metrics: Arc<TargetMetrics>,
        route: RouteLabel,
        status: http::StatusCode,
        headers: &HeaderMap,
        grpc: bool,
        tap: Option<Box<TapRecord>>,
        telemetry: Option<Box<RequestRecord>>,
    ) -> Self {
        let mut recorder = Recorder {
            metrics: Some(metrics),
            route,
            status: status.as_u16(),
            grpc,
            grpc_status: None,
            failed: false,
            tap,
            telemetry,
        };
        // A trailers-only gRPC response carries its status in the headers. Other responses
        // are classified by status code alone, so their headers are not searched.
        if grpc {
            recorder.grpc_status = grpc_status(headers);
        }
        if inner.is_end_stream() {
            recorder.record();
        }
        Self { inner, recorder }
    }
}

/// The response's gRPC status, a label of metrics: a code outside gRPC's 17 counts as 2
/// (UNKNOWN), as the gRPC spec tells clients to read it, so that a server cannot mint
/// labels without bound; one that does not parse counts as absent.
fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    let code: u32 = headers.get("grpc-status")?.to_str().ok()?.trim().parse().ok()?;
    Some(if code <= 16 { code } else { 2 })
}

impl Recorder {
    fn record(&mut self) {
        let Some(metrics) = self.metrics.take() else { return };
        let failed = self.failed || self.status >= 500 || (self.grpc && self.grpc_status != Some(0));
        let class = if failed { Classification::Failure } else { Classification::Success };
        let grpc_status = if self.grpc { self.grpc_status } else { None };
        metrics.response(std::mem::take(&mut self.route), self.status, grpc_status, class);
        if let Some(record) = self.tap.take() {
            let event = record.start.finish(record.direction, record.target, self.status, grpc_status);
            record.tap.publish(event);
        }
        if let Some(record) = self.telemetry.take() {
            record.finish(self.status, grpc_status, failed);
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.record();
    }
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = crate::http::HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, crate::http::HttpError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(record), Some(data)) = (this.recorder.telemetry.as_mut(), frame.data_ref()) {
                    record.response_bytes += data.len() as u64;
                }
                if let Some(trailers) = frame.trailers_ref()
                    && let Some(s) = grpc_status(trailers)
                {
                    this.recorder.grpc_status = Some(s);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                this.recorder.failed = true;
                this.recorder.record();
            }
            Poll::Ready(None) => this.recorder.record(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_labels_are_the_17_codes() {
        let status = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-status", v.parse().unwrap());
            grpc_status(&headers)
        };
        assert_eq!(status("0"), Some(0));
        assert_eq!(status("16"), Some(16));
        assert_eq!(status("17"), Some(2));
        assert_eq!(status("4294967295"), Some(2));
        assert_eq!(status("99999999999"), None);
        assert_eq!(status("x"), None);
        assert_eq!(grpc_status(&HeaderMap::new()), None);
    }
}
