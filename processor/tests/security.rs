//! Webhook security (issue 7, suite 4), extending `pipeline.rs`'s forged/missing-signature and
//! bad-body tests: a body that was accepted once and is then replayed signed with another
//! secret, signatures moved between bodies, and oversized bodies (declared, streamed, unsigned)
//! are all refused, and none of them enqueues anything.

mod common;

use common::*;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// POST `chunks` chunks of `size` bytes with `Transfer-Encoding: chunked` (no length declared
/// up front) over a raw socket; the status code of the reply.
async fn chunked_post_status(port: u16, chunks: usize, size: usize) -> u16 {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let head = "POST /v1/b2/events HTTP/1.1\r\nhost: 127.0.0.1\r\ntransfer-encoding: chunked\r\n\
         x-bz-event-notification-signature: v1=00\r\nconnection: close\r\n\r\n";
    s.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b' '; size];
    for _ in 0..chunks {
        // The server may answer and close before everything is written.
        if s.write_all(format!("{size:x}\r\n").as_bytes())
            .await
            .is_err()
            || s.write_all(&chunk).await.is_err()
            || s.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut reply = vec![0u8; 64];
    let n = s.read(&mut reply).await.unwrap_or(0);
    let line = String::from_utf8_lossy(&reply[..n]).to_string();
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {line:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_resigned_and_oversized_webhooks_enqueue_nothing() {
    let stack = stack().await;
    let http = reqwest::Client::new();
    let post = |body: Vec<u8>, sig: Option<String>| {
        let mut req = http.post(stack.webhook_url()).body(body);
        if let Some(sig) = sig {
            req = req.header("x-bz-event-notification-signature", sig);
        }
        req.send()
    };

    // One genuine delivery is accepted.
    let (body, sig) = signed_event(BUCKET, "users/sec/photos/a.jpg", "v1", "sec-1");
    let r = post(body.clone(), Some(sig.clone())).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["accepted"], 1);

    // The same body replayed, signed with another secret (an attacker's own rule): refused.
    let other = devstack::b2::signature(b"attacker-secret", &body);
    assert_eq!(post(body.clone(), Some(other)).await.unwrap().status(), 401);
    // A new event (fresh event id, so not a duplicate) signed with another secret: refused.
    let (body2, _) = signed_event(BUCKET, "users/sec/photos/b.jpg", "v1", "sec-2");
    let resigned = devstack::b2::signature(b"attacker-secret", &body2);
    assert_eq!(
        post(body2.clone(), Some(resigned)).await.unwrap().status(),
        401
    );
    // The genuine signature of one body moved onto another: refused.
    assert_eq!(
        post(body2.clone(), Some(sig.clone()))
            .await
            .unwrap()
            .status(),
        401
    );
    // Signature variants: empty, wrong scheme, truncated MAC, MAC with trailing garbage.
    let mac = sig.strip_prefix("v1=").unwrap();
    for bad in [
        String::new(),
        format!("v2={mac}"),
        format!("v1={}", &mac[..32]),
        format!("v1={mac}00"),
        format!("sha256={mac}"),
    ] {
        let r = post(body2.clone(), Some(bad.clone())).await.unwrap();
        assert_eq!(r.status(), 401, "signature {bad:?}");
    }

    // Oversized: correctly signed, unsigned, declared far beyond the limit, or streamed
    // without a length: 413 before any parsing.
    let big = vec![b' '; 300 * 1024];
    let big_sig = devstack::b2::signature(SECRET.as_bytes(), &big);
    assert_eq!(
        post(big.clone(), Some(big_sig)).await.unwrap().status(),
        413
    );
    assert_eq!(post(big, None).await.unwrap().status(), 413);
    let huge = vec![b'{'; 8 << 20];
    let huge_sig = devstack::b2::signature(SECRET.as_bytes(), &huge);
    // Declared far beyond what the server drains (4 MiB): answered 413 at once and the
    // connection closed, so a client still writing may see the reset instead of the answer.
    match post(huge, Some(huge_sig)).await {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(
            e.is_request() || e.is_body(),
            "8 MiB body: expected 413 or a closed connection, got {e:?}"
        ),
    }
    assert_eq!(
        chunked_post_status(stack.processor_port, 64, 64 * 1024).await,
        413,
        "4 MiB streamed without Content-Length"
    );

    // Only the genuine event reached Kafka, once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let uploaded = stack.read_topic(&stack.topics.uploaded);
    assert_eq!(uploaded.len(), 1, "{uploaded:#?}");
    assert_eq!(uploaded[0]["event_id"], "sec-1");
    // The processor counted the refusals by outcome.
    let metrics = reqwest::get(stack.metrics_url())
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("webhook_requests_total{outcome=\"bad_signature\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("webhook_requests_total{outcome=\"too_large\"}"),
        "{metrics}"
    );
}
