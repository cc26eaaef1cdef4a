//! `runner master --metrics ADDR`: `GET /metrics` over plain HTTP/1.1, for
//! Prometheus to scrape. One request per connection; another path gets 404,
//! another method 405, a head past [`REQUEST_BYTES_MAX`] 431, and one that
//! does not arrive whole within [`REQUEST_TIMEOUT`] is dropped.

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
    // The head ends at an empty line; HTTP/1.1 lets a server take a bare LF
    // as a line's end, as curl and people at a terminal may send.
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        if head.len() + n > REQUEST_BYTES_MAX {
            respond(
                &mut stream,
                false,
                "431 Request Header Fields Too Large",
                "text/plain",
                &format!("a request head may be at most {REQUEST_BYTES_MAX} bytes\n"),
            )
            .await?;
            // Closing with the rest of the head unread would reset the
            // connection, which can discard the answer on its way: read a
            // little more first.
            let mut left = REQUEST_BYTES_MAX;
            while left > 0 {
                match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                    _ => break,
                }
            }
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
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
            use std::sync::atomic::Ordering::Relaxed;
            let report = status_report(shared, false);
            let gauges = prometheus::MasterGauges {
                results_kept: shared.store().kept_len() as u64,
                results_dropped: shared.results_dropped.load(Relaxed),
                retries_waiting: shared.retries_waiting.load(Relaxed),
                journal: shared.journal.as_ref().map(|j| {
                    let st = j.stats();
                    prometheus::JournalGauges {
                        failing: j.failure().is_some(),
                        bytes: st.file_len.load(Relaxed),
                        compactions: st.compactions.load(Relaxed),
                        compaction_failures: st.compaction_failures.load(Relaxed),
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
            "405 Method Not Allowed",
            "text/plain",
            "only GET /metrics (or HEAD) is served here\n".to_string(),
        ),
    };
    respond(&mut stream, method == b"HEAD", status, ctype, &body).await
}

/// Writes the response and ends the connection; for HEAD, the same head
/// and no body. A 405 names the methods allowed.
async fn respond(
    stream: &mut TcpStream,
    head_only: bool,
    status: &str,
    ctype: &str,
    body: &str,
) -> std::io::Result<()> {
    let len = body.len();
    let body = if head_only { "" } else { body };
    let allow = if status.starts_with("405") {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\n{allow}Connection: close\r\n\r\n{body}"
    );
    stream.write_all(resp.as_bytes()).await?;
    stream.shutdown().await
}
