//! The S3 wiring `make test` provides for the archive suites: moto answers
//! the S3 protocol on the endpoint the tests are given.

use std::io::{Read, Write};
use std::net::TcpStream;

fn request(endpoint: &str, method: &str, path: &str) -> String {
    let hostport = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = TcpStream::connect(hostport).expect("moto is listening");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

#[test]
fn moto_answers_the_s3_protocol() {
    let Ok(endpoint) = std::env::var("WALY_TEST_S3_ENDPOINT") else {
        eprintln!("skipped: WALY_TEST_S3_ENDPOINT is not set (make test sets it)");
        return;
    };
    let bucket = format!("waly-wiring-{}", std::process::id());
    let put = request(&endpoint, "PUT", &format!("/{bucket}"));
    assert!(put.starts_with("HTTP/1.1 200"), "{put}");
    let list = request(&endpoint, "GET", "/");
    assert!(
        list.contains("ListAllMyBucketsResult") && list.contains(&bucket),
        "{list}"
    );
}
