//! The console's server side against the real stack: status-api binary with an accounts
//! file, the processor binary, the embedded broker over TCP and the S3 server over HTTP.
//! Sign-in (argon2 accounts, session cookie, rate limit), presign authorization, a presigned
//! PUT that flows through the B2 webhook into the Gallery, and a presigned thumbnail GET.

use devstack::testkit::*;
use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(90);

async fn login(base: &str, user: &str, password: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/session"))
        .json(&json!({ "user": user, "password": password }))
        .send()
        .await
        .unwrap()
}

/// Sign in; returns (cookie header value, status token).
async fn sign_in(base: &str, user: &str, password: &str) -> (String, String) {
    let r = login(base, user, password).await;
    assert_eq!(r.status(), StatusCode::OK, "sign in as {user}");
    let set = r.headers()[SET_COOKIE].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Max-Age=", "Path=/"] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    assert!(
        !set.contains("Secure"),
        "Secure is off by default (STATUS_COOKIE_SECURE)"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["user"], user);
    (cookie, body["token"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn sign_in_presign_upload_and_gallery() {
    // No embed stage here, so no hand-off to it (the default resolves the embed profile).
    let mut stack =
        Stack::start_with(workspace_bin("processor"), vec![("EMBED_HANDOFF", "none")]).await;
    let dir = tempfile::tempdir().unwrap();
    let accounts = dir.path().join("accounts");
    std::fs::write(
        &accounts,
        format!(
            "# test accounts\nalice:{}\nbob:{}\ncarol:{}\n",
            status_api::accounts::hash_password("alice-pw"),
            status_api::accounts::hash_password("bob-pw"),
            status_api::accounts::hash_password("carol-pw"),
        ),
    )
    .unwrap();
    let s3_endpoint = stack.s3_endpoint.clone();
    stack
        .start_status_api(
            &workspace_bin("status-api"),
            &[
                ("STATUS_ACCOUNTS_FILE", accounts.to_str().unwrap()),
                ("S3_ENDPOINT", &s3_endpoint),
                ("S3_ACCESS_KEY", "test"),
                ("S3_SECRET_KEY", "testsecret"),
                ("STATUS_LOGIN_MAX_FAILURES", "3"),
            ],
        )
        .await;
    let base = stack.status_url();
    let http = reqwest::Client::new();

    // Pages and assets are served from the binary, with a CSP naming the object store.
    for page in [
        "/",
        "/login",
        "/upload",
        "/status",
        "/gallery",
        "/dashboard",
        "/services",
        "/settings",
    ] {
        let r = http.get(format!("{base}{page}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{page}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(csp.contains(&s3_endpoint), "{csp}");
        assert!(r.text().await.unwrap().contains("/assets/app.js"));
    }
    let js = http
        .get(format!("{base}/assets/app.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(js.status(), StatusCode::OK);
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert_eq!(
        http.get(format!("{base}/assets/nope.js"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    // No session, wrong password, unknown user.
    let nobody: Value = http
        .get(format!("{base}/v1/session"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(nobody, json!({ "user": null }));
    assert_eq!(
        login(&base, "alice", "wrong").await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login(&base, "nobody", "alice-pw").await.status(),
        StatusCode::UNAUTHORIZED
    );

    // Rate limit: 3 failures a minute for carol from this address, then 429 even for the
    // right password; other accounts are unaffected.
    for _ in 0..3 {
        assert_eq!(
            login(&base, "carol", "guess").await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let limited = login(&base, "carol", "carol-pw").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    let (alice_cookie, alice_token) = sign_in(&base, "alice", "alice-pw").await;
    let (_, bob_token) = sign_in(&base, "bob", "bob-pw").await;

    // The cookie yields a status token; the cookie is not itself a status token.
    let s: Value = http
        .get(format!("{base}/v1/session"))
        .header(COOKIE, &alice_cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["user"], "alice");
    let cookie_value = alice_cookie.split_once('=').unwrap().1;
    assert_eq!(
        http.get(format!("{base}/v1/users/alice/status"))
            .bearer_auth(cookie_value)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );

    // Presign: only for oneself, names sanitised to one segment under the user's prefix.
    let presign = |user: &str, token: Option<&str>| {
        let mut req = http.post(format!("{base}/v1/users/{user}/uploads")).json(
            &json!({ "files": [{ "name": "../../bob/photos/S_freshflower_1600x1203.jpg" }] }),
        );
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    assert_eq!(
        presign("alice", None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        presign("bob", Some(&alice_token)).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let r = presign("alice", Some(&alice_token)).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let target = &body["uploads"][0];
    assert_eq!(
        target["key"],
        "users/alice/photos/S_freshflower_1600x1203.jpg"
    );
    let url = target["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("{s3_endpoint}/photos/users/alice/photos/")),
        "{url}"
    );
    let empty = http
        .post(format!("{base}/v1/users/alice/uploads"))
        .bearer_auth(&alice_token)
        .json(&json!({ "files": [] }))
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), StatusCode::BAD_REQUEST);

    // The URL is bound to its key: pointing it at bob's prefix breaks the signature.
    let photo = std::fs::read(corpus().join("photos/S_freshflower_1600x1203.jpg")).unwrap();
    let forged = url.replace("/users/alice/", "/users/bob/");
    let r = http.put(&forged).body(photo.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "forged presigned URL");

    // The browser's PUT, no S3 credentials: it flows through the webhook into the Gallery.
    let r = http
        .put(&url)
        .header("content-type", "image/jpeg")
        .body(photo)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "{}",
        r.text().await.unwrap_or_default()
    );
    let photos_url = format!("{base}/v1/users/alice/photos");
    let deadline = std::time::Instant::now() + TIMEOUT;
    let listed: Value = loop {
        let v: Value = http
            .get(&photos_url)
            .bearer_auth(&alice_token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["photos"][0]["thumbnail_status"] == "ok" {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no thumbnail in the gallery: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let p = &listed["photos"][0];
    assert_eq!(p["file"], "S_freshflower_1600x1203.jpg");
    assert_eq!(
        (p["width"].as_u64(), p["height"].as_u64()),
        (Some(1600), Some(1203))
    );
    let thumb = http
        .get(p["thumbnail_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(thumb.status(), StatusCode::OK);
    assert_eq!(&thumb.bytes().await.unwrap()[..2], &[0xff, 0xd8], "a JPEG");

    // Bob cannot see alice's photos or status, and has none of his own.
    for path in ["photos", "status"] {
        let r = http
            .get(format!("{base}/v1/users/alice/{path}"))
            .bearer_auth(&bob_token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{path}");
    }
    let bobs: Value = http
        .get(format!("{base}/v1/users/bob/photos"))
        .bearer_auth(&bob_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bobs["photos"], json!([]));

    // Sign out clears the cookie.
    let r = http
        .delete(format!("{base}/v1/session"))
        .header(COOKIE, &alice_cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers()[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
}
