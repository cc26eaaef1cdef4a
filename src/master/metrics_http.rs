//! `runner master --metrics ADDR`: `GET /metrics` over plain HTTP/1.1, for
//! Prometheus to scrape. One request per connection; anything else gets 404
//! (or 400), and a request that does not arrive whole within
//! [`REQUEST_TIMEOUT`] or [`REQUEST_BYTES_MAX`] is dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::serve::status_report;
use super::Shared;
use crate::metrics::prometheus;

/// Longest request head read.
pub const REQUEST_BYTES_MAX: usize = 8 * 1024;
/// Time allowed for the request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => {
                if let Ok((stream, _)) = r {
                    let s = shared.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(&s, stream)).await;
                    });
                }
            }
        }
    }
}

async fn answer(shared: &Shared, mut stream: TcpStream) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > REQUEST_BYTES_MAX {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    // Scrape configurations may add a query (`?format=...`): the path alone
    // decides.
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let (status, ctype, body) = match (method, path) {
        (b"GET" | b"HEAD", b"/metrics") => {
            let report = status_report(shared, false);
            let gauges = prometheus::MasterGauges {
                results_kept: shared.store().kept_len() as u64,
                journal: shared.journal.as_ref().map(|j| {
                    use std::sync::atomic::Ordering::Relaxed;
                    let st = j.stats();
                    prometheus::JournalGauges {
                        failing: j.failure().is_some(),
                        bytes: st.file_len.load(Relaxed),
                        compactions: st.compactions.load(Relaxed),
                        syncs: st.syncs.load(Relaxed),
                    }
                }),
            };
            let text = prometheus::render(&report, &shared.histograms(), &gauges);
            ("200 OK", prometheus::CONTENT_TYPE, text)
        }
        (b"GET" | b"HEAD", _) => (
            "404 Not Found",
            "text/plain",
            "only /metrics is served here\n".to_string(),
        ),
        _ => (
            "400 Bad Request",
            "text/plain",
            "GET /metrics\n".to_string(),
        ),
    };
    let len = body.len();
    // HEAD: the same head, no body.
    let body = if method == b"HEAD" { "" } else { body.as_str() };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}"
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}
