//! Counts every API call by method (one the server serves, or `unknown`) and gRPC code, and
//! times it, for Prometheus. The code
//! comes from the response's `grpc-status` header when a call fails before its body (a
//! trailers-only answer), otherwise from the trailers that end the body, so a stream that
//! fails after it started counts with its real code. A body that ends without trailers
//! counts as Unknown; one the client abandons, as Cancelled. The time runs to the end of
//! the body.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tonic::codegen::http;

/// The layer to put in front of the API services.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiMetricsLayer;

impl<S> tower::Layer<S> for ApiMetricsLayer {
    type Service = ApiMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ApiMetrics { inner }
    }
}

#[derive(Clone, Debug)]
pub struct ApiMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for ApiMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
{
    type Response = http::Response<MeteredBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // Only methods the server serves become labels: a caller choosing paths cannot grow
        // the metric set.
        let method = crate::api::policy::method_label(request.uri().path());
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let mut call = Some(Call { method, started });
            if let Some(code) = grpc_status(response.headers()) {
                if let Some(call) = call.take() {
                    call.record(code);
                }
            }
            Ok(response.map(|body| MeteredBody { inner: body, call }))
        })
    }
}

/// A call not yet counted.
struct Call {
    method: &'static str,
    started: Instant,
}

impl Call {
    fn record(self, code: tonic::Code) {
        metrics::counter!("testudo_api_calls_total", "method" => self.method, "code" => format!("{code:?}"))
            .increment(1);
        metrics::histogram!("testudo_api_call_seconds", "method" => self.method)
            .record(self.started.elapsed().as_secs_f64());
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
}

/// A response body that counts its call when the trailers carrying the status pass.
pub struct MeteredBody<R> {
    inner: R,
    call: Option<Call>,
}

impl<R> Drop for MeteredBody<R> {
    fn drop(&mut self) {
        if let Some(call) = self.call.take() {
            call.record(tonic::Code::Cancelled);
        }
    }
}

impl<R: tonic::codegen::Body + Unpin> tonic::codegen::Body for MeteredBody<R> {
    type Data = R::Data;
    type Error = R::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_status) {
                    if let Some(call) = self.call.take() {
                        call.record(code);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(call) = self.call.take() {
                    call.record(tonic::Code::Unknown);
                }
            }
            Poll::Ready(None) => {
                if let Some(call) = self.call.take() {
                    call.record(tonic::Code::Unknown);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
