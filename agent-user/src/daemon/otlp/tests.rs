//! The sender loop against a collector on loopback (the privileged test
//! covers the daemon end to end; this covers pacing and shutdown without
//! root).

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    sync::atomic::AtomicUsize,
};

use super::{proto::ExportLogsServiceRequest, *};

/// Answers 200 to every request; counts the records and requests.
fn collector() -> (Endpoint, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let ep = http::parse_endpoint(&format!("http://{}", l.local_addr().unwrap())).unwrap();
    let (records, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (rec, req) = (records.clone(), requests.clone());
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (rec, req) = (rec.clone(), req.clone());
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                loop {
                    let mut len = 0;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let l = line.to_ascii_lowercase();
                        if let Some(v) = l.strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).unwrap();
                    let m = ExportLogsServiceRequest::decode(body.as_slice()).unwrap();
                    let n = m.resource_logs[0].scope_logs[0].log_records.len();
                    rec.fetch_add(n, Ordering::SeqCst);
                    req.fetch_add(1, Ordering::SeqCst);
                    let ok = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                    w.write_all(ok.as_bytes()).unwrap();
                }
            });
        }
    });
    (ep, records, requests)
}

fn shared(batch: usize, flush: Duration, queue: usize) -> Arc<Shared> {
    Arc::new(Shared {
        queue: Mutex::new(Queue::new(queue)),
        wake: Notify::new(),
        stats: Arc::default(),
        batch,
        flush,
        timeout: Duration::from_secs(5),
        resource: map::resource(),
    })
}

fn event() -> Arc<Event> {
    Arc::new(Event::lost(crate::clock::now_rfc3339(), 1, "test"))
}

#[tokio::test]
async fn a_backlog_goes_out_in_full_batches_without_waiting_for_the_timer() {
    let (ep, records, requests) = collector();
    // Queued before the sender starts, as after an outage.
    let s = shared(10, Duration::from_secs(60), 1000);
    for _ in 0..95 {
        s.enqueue(event());
    }
    let (_tx, closing) = watch::channel(None);
    let sender = tokio::spawn(s.clone().send_loop(Client::new(ep, vec![]), closing));
    let t0 = Instant::now();
    while records.load(Ordering::SeqCst) < 95 && t0.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Nine full batches, then the rest on the timer's first (immediate)
    // tick: a batch per 60 s tick would have taken nine minutes.
    assert_eq!(records.load(Ordering::SeqCst), 95);
    assert_eq!(requests.load(Ordering::SeqCst), 10);
    assert_eq!(s.stats.sent.load(Ordering::SeqCst), 95);
    assert_eq!(s.stats.queued.load(Ordering::SeqCst), 0);
    sender.abort();
}

#[tokio::test]
async fn shutdown_flushes_the_rest_and_overflow_is_counted() {
    let (ep, records, _) = collector();
    let s = shared(512, Duration::from_secs(60), 100);
    let (tx, closing) = watch::channel(None);
    let sender = tokio::spawn(s.clone().send_loop(Client::new(ep, vec![]), closing));
    // Past the first (immediate) tick, then 130 records into a queue of 100.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..130 {
        s.enqueue(event());
    }
    assert_eq!(s.stats.lost.load(Ordering::SeqCst), 30);
    assert_eq!(records.load(Ordering::SeqCst), 0);
    tx.send(Some(Instant::now() + FINAL_FLUSH)).unwrap();
    tokio::time::timeout(Duration::from_secs(5), sender)
        .await
        .expect("the sender ends by the deadline")
        .unwrap();
    assert_eq!(records.load(Ordering::SeqCst), 100);
    assert_eq!(s.stats.sent.load(Ordering::SeqCst), 100);
    assert_eq!(s.stats.queued.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_collector_that_is_gone_costs_the_batch_at_shutdown_not_more_time() {
    // A port nothing listens on (bound, then closed).
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let ep = http::parse_endpoint(&format!("http://127.0.0.1:{port}")).unwrap();
    let s = shared(4, Duration::from_millis(20), 100);
    let (tx, closing) = watch::channel(None);
    let sender = tokio::spawn(s.clone().send_loop(Client::new(ep, vec![]), closing));
    for _ in 0..10 {
        s.enqueue(event());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.stats.failed_requests.load(Ordering::SeqCst) >= 1);
    assert!(
        s.stats
            .last_error
            .lock()
            .unwrap()
            .as_deref()
            .unwrap()
            .contains("connecting")
    );
    // The deadline ends the retries: the loop returns (a stuck one would
    // trip the outer timeout), counting what it could not send.
    tx.send(Some(Instant::now() + Duration::from_millis(500)))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), sender)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s.stats.lost.load(Ordering::SeqCst), 10);
    assert_eq!(s.stats.sent.load(Ordering::SeqCst), 0);
    assert_eq!(s.stats.queued.load(Ordering::SeqCst), 0);
}
