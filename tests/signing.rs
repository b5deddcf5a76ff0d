//! SigV4: every request the function sends to an Amazon OpenSearch domain carries a signature
//! that matches what went over the wire: method, path, query, the signed headers and the body.
//! A proxy in front of the real server recomputes each signature from the request it received
//! (with the same credentials and the request's own `x-amz-date`) and records the ones that
//! differ; the requests then go on to the server, so the batch is also applied.
//!
//! The credentials come from the environment, as Lambda gives them (access key, secret and
//! session token), so this binary holds one test: it sets the variables before anything runs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings, sign,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_types::date_time::{DateTime, Format};
use common::proxy::{Fault, Proxy, Request};
use common::*;
use sha2::{Digest, Sha256};
use stream_indexer::sink::transport::{Method, OpenSearch};

const ACCESS_KEY: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const TOKEN: &str = "session-token/with+odd=chars";
const REGION: &str = "eu-west-1";

#[tokio::test]
async fn every_request_is_signed_over_what_was_sent() {
    // SAFETY: the only test in this binary, and nothing else runs before this line.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET);
        std::env::set_var("AWS_SESSION_TOKEN", TOKEN);
        std::env::remove_var("AWS_PROFILE");
    }
    let index = unique_index("signed");
    create_index(&index).await;
    let verdicts: Arc<Mutex<Vec<Verdict>>> = Arc::default();
    // The service the requests are signed for now: `es` for the function, `aoss` for the
    // tools' requests below.
    let service = Arc::new(Mutex::new("es"));
    let (record, expected) = (verdicts.clone(), service.clone());
    let proxy = Proxy::start(&opensearch_url(), move |r| {
        let target = format!("{} {}{}", r.method, r.path, r.query);
        let verdict = verify(r, &expected.lock().unwrap());
        record.lock().unwrap().push((target, verdict));
        Fault::Pass
    })
    .await;
    let indexer = indexer(
        &proxy.url,
        &index,
        &[
            ("OPENSEARCH_AUTH", "sigv4"),
            ("AWS_REGION", REGION),
            ("QUARANTINE_INDEX", &format!("{index}-quarantine")),
        ],
    )
    .await;
    handle_cleanly(&indexer, "mixed.json").await;
    expect_mixed_landed(&index).await;

    // The tools' requests, for OpenSearch Serverless: a document path whose id is
    // percent-encoded (signed paths are encoded once more), and a query string with characters
    // the encoder escapes.
    *service.lock().unwrap() = "aoss";
    let os = OpenSearch::connect(&config_for(
        &proxy.url,
        &index,
        &[
            ("OPENSEARCH_AUTH", "sigv4"),
            ("AWS_REGION", REGION),
            ("OPENSEARCH_SIGV4_SERVICE", "aoss"),
        ],
    ))
    .await
    .unwrap();
    let t = Duration::from_secs(30);
    let id = format!("/{index}/_doc/{}", urlencode("types#1 /ü+x"));
    let missing = os.request(Method::Get, &id, None, t).await.unwrap_err();
    assert_eq!(missing.status, Some(404), "{missing}");
    let search =
        format!("/{index}/_search?filter_path=hits.hits._id,hits.*.x,_scroll_id&scroll=1m&q=a+b");
    os.request(Method::Post, &search, Some(b"{}".to_vec()), t)
        .await
        .unwrap();

    let verdicts = verdicts.lock().unwrap().clone();
    assert!(
        verdicts.iter().any(|(t, _)| t.contains("/_bulk?"))
            && verdicts.iter().any(|(t, _)| t.contains("/_doc/"))
            && verdicts.iter().any(|(t, _)| t.contains("/_search?")),
        "a request did not go through the proxy: {verdicts:?}"
    );
    let wrong: Vec<_> = verdicts.iter().filter(|(_, v)| v.is_err()).collect();
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// A request's method and target, and whether its signature matched.
type Verdict = (String, Result<(), String>);

/// Recomputes the request's signature for `service`; `Err` says what differs.
fn verify(r: &Request, service: &str) -> Result<(), String> {
    // The query goes out as the canonical request has it: a proxy or a signer that takes the
    // query as received (rather than re-encoding it, as Amazon's endpoints do) computes the
    // same signature only then.
    let query = r.query.strip_prefix('?').unwrap_or(&r.query);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let signed = format!(
            "{}={}",
            sigv4_encode(&decode(name)),
            sigv4_encode(&decode(value))
        );
        if signed != pair {
            return Err(format!("query sent as {pair:?}, signed as {signed:?}"));
        }
    }
    let authorization = r.header("authorization").ok_or("no authorization header")?;
    let signed: Vec<&str> = authorization
        .split("SignedHeaders=")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .ok_or("no SignedHeaders")?
        .split(';')
        .collect();
    let scope = format!("Credential={ACCESS_KEY}/");
    if !authorization.contains(&scope) || !authorization.contains(&format!("/{REGION}/{service}/"))
    {
        return Err(format!("credential scope: {authorization}"));
    }
    // OpenSearch Serverless requires the body's hash as a header; the domain checks it too.
    let hash = hex(&Sha256::digest(&r.body));
    if r.header("x-amz-content-sha256") != Some(hash.as_str()) {
        return Err(format!(
            "x-amz-content-sha256 is not the body's hash {hash}"
        ));
    }
    if r.header("x-amz-security-token") != Some(TOKEN) {
        return Err("no session token".into());
    }
    for name in [
        "host",
        "x-amz-date",
        "x-amz-content-sha256",
        "x-amz-security-token",
    ] {
        if !signed.contains(&name) {
            return Err(format!("{name} is not signed: {signed:?}"));
        }
    }
    let date = r.header("x-amz-date").ok_or("no x-amz-date")?;
    let time = amz_date(date).ok_or_else(|| format!("x-amz-date {date:?}"))?;

    // The signer adds x-amz-date, the token and the hash itself; every other signed header is
    // passed as it arrived.
    let added = ["x-amz-date", "x-amz-security-token", "x-amz-content-sha256"];
    let mut headers: Vec<(&str, &str)> = Vec::new();
    for name in signed.iter().filter(|n| !added.contains(n)) {
        let value = if *name == "host" {
            r.host.as_str()
        } else {
            r.header(name)
                .ok_or_else(|| format!("signed header {name} was not sent"))?
        };
        headers.push((name, value));
    }
    let identity: Identity =
        Credentials::new(ACCESS_KEY, SECRET, Some(TOKEN.into()), None, "test").into();
    let mut settings = SigningSettings::default();
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(REGION)
        .name(service)
        .time(time)
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let uri = format!("http://{}{}{}", r.host, r.path, r.query);
    let request = SignableRequest::new(
        &r.method,
        &uri,
        headers.into_iter(),
        SignableBody::Bytes(&r.body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(request, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    let expected = instructions
        .headers()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.to_string())
        .ok_or("the signer gave no authorization header")?;
    if expected == authorization {
        Ok(())
    } else {
        Err(format!("sent {authorization}\nexpected {expected}"))
    }
}

/// `20261207T103000Z` as a time.
fn amz_date(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let iso = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &text[0..4],
        &text[4..6],
        &text[6..8],
        &text[9..11],
        &text[11..13],
        &text[13..15]
    );
    SystemTime::try_from(DateTime::from_str(&iso, Format::DateTime).ok()?).ok()
}

/// SigV4's encoding of a query name or value: every byte but the unreserved ones as `%XX`.
fn sigv4_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
