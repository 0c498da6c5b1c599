//! Counts every API call by method and gRPC code, and times it, for Prometheus. A code
//! comes from the response's `grpc-status` header (how a call that fails before its body
//! is answered); a call answered with a body counts as OK here, and a stream that fails
//! after it started is not seen.

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
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            let code = response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from_i32);
            metrics::counter!("testudo_api_calls_total", "method" => method.clone(), "code" => format!("{code:?}")).increment(1);
            metrics::histogram!("testudo_api_call_seconds", "method" => method).record(started.elapsed().as_secs_f64());
            Ok(response)
        })
    }
}
