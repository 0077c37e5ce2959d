//! The S3 wiring `make test` provides for the archive suites: moto answers
//! the S3 protocol on the endpoint the tests are given.

use crate::harness::s3_request as request;

#[test]
fn moto_answers_the_s3_protocol() {
    let Ok(endpoint) = std::env::var("WALY_TEST_S3_ENDPOINT") else {
        eprintln!("skipped: WALY_TEST_S3_ENDPOINT is not set (make test sets it)");
        return;
    };
    let bucket = format!("waly-wiring-{}", crate::harness::run_id());
    let put = request(&endpoint, "PUT", &format!("/{bucket}"));
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");
    let list = request(&endpoint, "GET", "/");
    assert!(
        list.contains("ListAllMyBucketsResult") && list.contains(&bucket),
        "{list}"
    );
}
