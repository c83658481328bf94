//! The dashboard: three static files compiled into the binary and served by the API, so
//! that it works offline and the page loads nothing from anywhere but the control plane
//! (the Content-Security-Policy says so to the browser too). The page itself polls the
//! JSON endpoints and streams the tap (`dashboard/dashboard.js`).

use axum::body::Body;
use axum::response::Response;
use http::header;

const INDEX: &str = include_str!("dashboard/index.html");
const SCRIPT: &str = include_str!("dashboard/dashboard.js");
const STYLE: &str = include_str!("dashboard/dashboard.css");

/// Only this origin: no CDN, no fonts or images from elsewhere, no inline scripts.
const POLICY: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:";

fn file(content_type: &'static str, body: &'static str) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_SECURITY_POLICY, POLICY)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from(body))
        .expect("static headers are valid")
}

pub async fn index() -> Response {
    file("text/html; charset=utf-8", INDEX)
}

pub async fn script() -> Response {
    file("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> Response {
    file("text/css; charset=utf-8", STYLE)
}
