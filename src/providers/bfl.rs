//! `bfl` (Black Forest Labs' Flux): submit a task, poll until it is ready, then fetch
//! the image it points at.

use super::client::Call;
use super::upstream::{Connection, UpstreamError};
use super::wire::{Image, ImageRequest};
use base64::Engine;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

pub(super) fn auth(conn: &Connection, req: Call) -> Call {
    conn.authorize(req, "x-key")
}

/// Only follow links into the provider's own domain: a polling or delivery URL must
/// not turn Easel into a client of arbitrary hosts.
fn same_site(base: &str, url: &str) -> bool {
    let host = |u: &str| {
        url::Url::parse(u)
            .ok()
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
    };
    let (Some(b), Some(h)) = (host(base), host(url)) else {
        return false;
    };
    if b == h {
        return true;
    }
    // api.bfl.ai hands out api.us1.bfl.ai and delivery-eu1.bfl.ai: same last two labels.
    let site = |s: &str| {
        let labels: Vec<&str> = s.rsplit('.').take(2).collect();
        (labels.len() == 2 && labels.iter().all(|l| l.chars().any(|c| c.is_alphabetic())))
            .then(|| format!("{}.{}", labels[1], labels[0]))
    };
    matches!((site(&b), site(&h)), (Some(x), Some(y)) if x == y)
}

async fn one(conn: &Connection, model: &str, req: &ImageRequest) -> Result<Image, UpstreamError> {
    let mut body = json!({"prompt": req.prompt});
    // Flux Kontext edits the image given as `input_image` (base64).
    if let Some(image) = &req.source {
        if req.mask.is_some() {
            return Err(UpstreamError::Unsupported(format!(
                "{} (bfl) takes no mask; describe the area to change in the prompt",
                conn.name
            )));
        }
        body["input_image"] = base64::engine::general_purpose::STANDARD
            .encode(&image.bytes)
            .into();
    }
    if let Some((w, h)) = req.dimensions() {
        body["width"] = w.into();
        body["height"] = h.into();
    }
    for (k, v) in &req.rest {
        if body.get(k).is_none() {
            body[k] = v.clone();
        }
    }
    let url = format!("{}/v1/{model}", conn.base_url);
    let res = conn.send(auth(conn, conn.post(&url).json(&body))).await?;
    let task = conn.json(res).await?;
    let id = task
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| UpstreamError::garbage(&conn.name, "no task id in the answer"))?;
    let polling = task
        .get("polling_url")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}/v1/get_result?id={id}", conn.base_url));
    if !same_site(&conn.base_url, &polling) {
        return Err(UpstreamError::garbage(
            &conn.name,
            "a polling URL outside the provider",
        ));
    }
    let started = Instant::now();
    let mut wait = Duration::from_millis(200);
    loop {
        if started.elapsed() > conn.timeout {
            return Err(UpstreamError::Timeout(conn.name.clone()));
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
        let res = conn.send(auth(conn, conn.get(&polling))).await?;
        let v = conn.json(res).await?;
        match v.get("status").and_then(Value::as_str) {
            Some("Ready") => {
                let sample = v
                    .pointer("/result/sample")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        UpstreamError::garbage(&conn.name, "a ready task with no image")
                    })?;
                if !same_site(&conn.base_url, sample) {
                    return Err(UpstreamError::garbage(
                        &conn.name,
                        "an image URL outside the provider",
                    ));
                }
                let (bytes, media_type) = conn.download(sample).await?;
                return Ok(Image {
                    bytes,
                    media_type,
                    revised_prompt: None,
                });
            }
            Some("Pending") | Some("Queued") | Some("Processing") | None => continue,
            Some(other) => {
                return Err(UpstreamError::Status {
                    provider: conn.name.clone(),
                    status: if other.contains("Moderated") {
                        400
                    } else {
                        502
                    },
                    message: format!("the task ended as {other}"),
                    retry_after: None,
                });
            }
        }
    }
}

pub(super) async fn images(
    conn: &Connection,
    model: &str,
    req: &ImageRequest,
) -> Result<Vec<Image>, UpstreamError> {
    let mut out = Vec::new();
    for _ in 0..req.count() {
        out.push(one(conn, model, req).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::same_site;

    #[test]
    fn links_must_stay_with_the_provider() {
        assert!(same_site(
            "https://api.bfl.ai",
            "https://api.us1.bfl.ai/v1/get_result?id=1"
        ));
        assert!(same_site(
            "https://api.bfl.ai",
            "https://delivery-eu1.bfl.ai/x.png"
        ));
        assert!(same_site(
            "http://127.0.0.1:9000",
            "http://127.0.0.1:9000/poll"
        ));
        assert!(!same_site(
            "http://127.0.0.1:9000",
            "http://169.254.169.254/"
        ));
        assert!(!same_site("http://10.0.0.1", "http://10.0.0.2/"));
        assert!(!same_site(
            "https://api.bfl.ai",
            "https://evil.example/bfl.ai"
        ));
    }
}
