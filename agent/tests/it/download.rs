//! Package downloads against a real HTTP server: Range resume, a server
//! that ignores ranges, a connection cut mid-body, endless data, errors.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use outpost_agent::download::{DownloadError, download, http_agent};

use crate::common::request_range_start;

/// A local HTTP server; dropping it (its runtime) stops it.
pub(crate) struct Server {
    pub(crate) base: String,
    _rt: tokio::runtime::Runtime,
}

fn range_start(h: &HeaderMap) -> Option<usize> {
    h.get(header::RANGE)?
        .to_str()
        .ok()?
        .strip_prefix("bytes=")?
        .strip_suffix('-')?
        .parse()
        .ok()
}

/// Serves `data` at /ok (honours Range), /norange (ignores it), /endless,
/// /missing.
pub(crate) fn serve(data: Vec<u8>) -> Server {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let data = Arc::new(data);
    let app = Router::new()
        .route(
            "/ok",
            get(|State(d): State<Arc<Vec<u8>>>, h: HeaderMap| async move {
                match range_start(&h) {
                    Some(s) if s <= d.len() => (
                        StatusCode::PARTIAL_CONTENT,
                        [(
                            header::CONTENT_RANGE,
                            format!("bytes {s}-{}/{}", d.len().saturating_sub(1), d.len()),
                        )],
                        d[s..].to_vec(),
                    )
                        .into_response(),
                    Some(_) => StatusCode::RANGE_NOT_SATISFIABLE.into_response(),
                    None => d.to_vec().into_response(),
                }
            }),
        )
        .route(
            "/norange",
            get(|State(d): State<Arc<Vec<u8>>>| async move { d.to_vec() }),
        )
        .route(
            "/endless",
            get(|| async {
                let chunks =
                    futures_util::stream::repeat_with(|| Ok::<_, std::io::Error>(vec![7u8; 4096]));
                Body::from_stream(chunks)
            }),
        )
        .route("/missing", get(|| async { StatusCode::NOT_FOUND }))
        .with_state(data);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Server {
        base: format!("http://{addr}"),
        _rt: rt,
    }
}

/// A raw HTTP server that answers every request (honouring `Range`) with
/// the full Content-Length but only `cut` bytes of body, then closes the
/// connection: a link that breaks mid-download, deterministically (the
/// bytes are written to the socket before it closes).
fn cut_server(data: Vec<u8>, cut: usize) -> String {
    use std::io::{BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let start = request_range_start(&mut reader);
            let status = if start > 0 {
                "206 Partial Content"
            } else {
                "200 OK"
            };
            let full = data.len() - start;
            let end = (start + cut).min(data.len());
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {full}\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(&data[start..end]);
            let _ = stream.flush();
            // Dropping the stream closes it short of Content-Length.
        }
    });
    format!("http://{addr}")
}

/// A download without progress reports.
fn fetch(url: &str, dest: &std::path::Path, from: u64, length: u64) -> Result<u64, DownloadError> {
    download(&http_agent(), url, dest, from, length, |_| {})
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn a_download_resumes_from_the_bytes_on_disk() {
    let d = data(3 << 20);
    let s = serve(d.clone());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("pkg.part");
    let mut progress = Vec::new();
    let n = download(
        &http_agent(),
        &format!("{}/ok", s.base),
        &dest,
        0,
        d.len() as u64,
        |p| progress.push(p),
    )
    .unwrap();
    assert_eq!(n, d.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), d);
    // Progress is reported per fsynced MiB, increasing, ending at the length.
    assert!(progress.windows(2).all(|w| w[0] < w[1]), "{progress:?}");
    assert_eq!(progress.last(), Some(&(d.len() as u64)));

    // A crash left 1 MiB + a torn tail: resume from the persisted 1 MiB.
    let mut torn = d[..(1 << 20)].to_vec();
    torn.extend_from_slice(&[0xEE; 5000]);
    std::fs::write(&dest, &torn).unwrap();
    let n = fetch(&format!("{}/ok", s.base), &dest, 1 << 20, d.len() as u64).unwrap();
    assert_eq!(n, d.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), d);
}

#[test]
fn a_server_that_ignores_ranges_is_downloaded_from_the_start() {
    let d = data(200_000);
    let s = serve(d.clone());
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("pkg.part");
    std::fs::write(&dest, &d[..50_000]).unwrap();
    let n = fetch(
        &format!("{}/norange", s.base),
        &dest,
        50_000,
        d.len() as u64,
    )
    .unwrap();
    assert_eq!(n, d.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), d);
}

#[test]
fn a_cut_connection_reports_the_bytes_written_and_a_retry_completes() {
    let d = data(300_000);
    let base = cut_server(d.clone(), 120_000);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("pkg.part");
    let url = format!("{base}/cut");
    let mut at = 0;
    let mut tries = 0;
    loop {
        tries += 1;
        assert!(tries < 10, "no progress");
        match fetch(&url, &dest, at, d.len() as u64) {
            Ok(n) => {
                assert_eq!(n, d.len() as u64);
                break;
            }
            Err(e @ DownloadError::Interrupted { .. }) => {
                assert!(e.bytes_written() > at, "{e}");
                at = e.bytes_written();
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(tries, 3);
    assert_eq!(std::fs::read(&dest).unwrap(), d);
}

#[test]
fn endless_data_stops_at_the_signed_length() {
    let s = serve(vec![]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("pkg.part");
    let err = fetch(&format!("{}/endless", s.base), &dest, 0, 100_000).unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::TooLong {
                length: 100_000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(std::fs::metadata(&dest).unwrap().len(), 100_000);
}

#[test]
fn http_errors_and_dead_servers_are_typed() {
    let s = serve(vec![1, 2, 3]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("pkg.part");
    let err = fetch(&format!("{}/missing", s.base), &dest, 0, 3).unwrap_err();
    assert!(
        matches!(err, DownloadError::Status { status: 404, .. }),
        "{err}"
    );
    let port = crate::common::free_port();
    let err = fetch(&format!("http://127.0.0.1:{port}/x"), &dest, 0, 3).unwrap_err();
    assert!(
        matches!(
            err,
            DownloadError::Interrupted {
                bytes_written: 0,
                ..
            }
        ),
        "{err}"
    );
    // Nothing more to fetch: done without a request.
    std::fs::write(&dest, [1, 2, 3]).unwrap();
    let n = fetch(&format!("http://127.0.0.1:{port}/x"), &dest, 3, 3).unwrap();
    assert_eq!(n, 3);
}
