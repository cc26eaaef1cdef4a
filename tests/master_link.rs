//! The master's view of one worker, driven by hand with a fake clock: credit,
//! results, retries, stale results, heartbeat loss and the timeout backstop.

use std::time::{Duration, Instant};

use runner::master::link::{
    Departure, LinkTiming, Outcome, WorkerLink, HELD_UP_TIMEOUTS_MAX, UNCHARGED_ATTEMPTS_MAX,
    WAKE_LEAD,
};
use runner::net::Arrivals;
use runner::proto::*;
use runner::sched::{RetryPolicy, TaskRecord};

const TIMING: LinkTiming = LinkTiming {
    heartbeat: Duration::from_millis(200),
    worker_timeout: Duration::from_secs(1),
    timeout_grace: Duration::from_secs(2),
};

fn link(slots: u32, prefetch: u32, t0: Instant) -> WorkerLink<&'static str> {
    WorkerLink::new(
        Text::from_static("w1"),
        slots,
        prefetch,
        TIMING,
        RetryPolicy::default(),
        t0,
    )
}

fn record(id: u64, retries: u8, timeout_ms: u32, t0: Instant) -> TaskRecord<&'static str> {
    let spec = NewTask {
        kind: Text::from_static("noop"),
        payload: Payload::empty(),
        priority: 1,
        retries,
        timeout_ms,
    };
    TaskRecord::new(id, spec, "client", t0)
}

fn done(task_id: u64, attempt: u32, status: AttemptStatus) -> AttemptResult {
    AttemptResult {
        task_id,
        attempt,
        status,
        output: Payload::from("out"),
        error: Text::from_static("boom"),
    }
}

#[test]
fn credit_is_slots_plus_prefetch_less_what_is_out() {
    let t0 = Instant::now();
    let mut l = link(2, 1, t0);
    assert_eq!(l.credit(), 3);
    l.assign(record(1, 0, 0, t0), t0);
    l.assign(record(2, 0, 0, t0), t0);
    assert_eq!(l.credit(), 1);
    l.assign(record(3, 0, 0, t0), t0);
    assert_eq!(l.credit(), 0);
}

#[test]
fn byte_credit_bounds_the_payload_a_worker_holds_and_comes_back_with_results() {
    use runner::master::link::IN_FLIGHT_BYTES_MAX;
    let t0 = Instant::now();
    let mut l = link(2, 256, t0);
    let big = |id: u64| {
        let spec = NewTask {
            kind: Text::from_static("echo"),
            payload: Payload::from(vec![b'x'; IN_FLIGHT_BYTES_MAX / 2]),
            priority: 1,
            retries: 0,
            timeout_ms: 0,
        };
        TaskRecord::new(id, spec, "client", t0)
    };
    assert_eq!(l.byte_credit(), IN_FLIGHT_BYTES_MAX);
    l.assign(big(1), t0);
    assert!(l.byte_credit() > 0);
    l.assign(big(2), t0);
    assert_eq!(l.byte_credit(), 0, "two halves of the budget use it up");
    assert!(l.credit() > 0, "the count alone would allow more");
    l.finish(done(1, 1, AttemptStatus::Ok), t0);
    assert_eq!(
        l.byte_credit(),
        IN_FLIGHT_BYTES_MAX - big(3).spec.batch_weight(),
        "a result gives its bytes back"
    );
}

#[test]
fn an_ok_result_finishes_the_task_once() {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    let a = l.assign(record(7, 3, 0, t0), t0);
    assert_eq!((a.task_id, a.attempt), (7, 1));
    match l.finish(done(7, 1, AttemptStatus::Ok), t0 + Duration::from_millis(5)) {
        Outcome::Finished {
            result, reply, ran, ..
        } => {
            assert_eq!(
                (result.id, result.status, result.attempts),
                (7, TaskStatus::Ok, 1)
            );
            assert_eq!(result.worker, "w1");
            assert_eq!(reply, "client");
            assert_eq!(ran, Duration::from_millis(5));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        l.finish(done(7, 1, AttemptStatus::Ok), t0),
        Outcome::Stale { result } if result.task_id == 7 && result.attempt == 1
    ));
}

#[test]
fn a_failed_attempt_is_retried_with_backoff_until_retries_run_out() {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    let mut rec = record(1, 1, 0, t0);
    l.assign(rec, t0);
    rec = match l.finish(done(1, 1, AttemptStatus::Failed), t0) {
        Outcome::Requeue { record, delay, .. } => {
            assert_eq!(delay, RetryPolicy::default().delay(1));
            record
        }
        other => panic!("{other:?}"),
    };
    let a = l.assign(rec, t0);
    assert_eq!(a.attempt, 2, "a retry is a new attempt");
    match l.finish(done(1, 2, AttemptStatus::Failed), t0) {
        Outcome::Finished { result, .. } => {
            assert_eq!(result.status, TaskStatus::Failed);
            assert_eq!(result.errors.len(), 2);
            assert!(result
                .errors
                .iter()
                .all(|e| e.reason == "boom" && e.worker == "w1"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_rejected_attempt_finishes_the_task_failed_whatever_retries_are_left() {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    l.assign(record(1, 5, 0, t0), t0);
    match l.finish(done(1, 1, AttemptStatus::Rejected), t0) {
        Outcome::Finished { result, .. } => {
            assert_eq!(result.status, TaskStatus::Failed);
            assert_eq!(result.attempts, 1);
            assert_eq!(result.errors.len(), 1);
            assert_eq!(
                result.errors[0].reason,
                "not retried, no attempt can succeed: boom"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(l.in_flight(), 0);
}

#[test]
fn a_result_for_an_older_attempt_is_stale() {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    let mut r = record(1, 3, 0, t0);
    r.next_attempt(); // attempt 1 went to another worker, which was lost
    let a = l.assign(r, t0);
    assert_eq!(a.attempt, 2);
    assert!(matches!(
        l.finish(done(1, 1, AttemptStatus::Ok), t0),
        Outcome::Stale { result } if result.attempt == 1
    ));
    assert_eq!(l.in_flight(), 1, "the current attempt is still out");
}

#[test]
fn a_returned_attempt_is_requeued_at_once_and_not_charged() {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    l.assign(record(1, 0, 0, t0), t0);
    match l.finish(done(1, 1, AttemptStatus::Returned), t0) {
        Outcome::Requeue { record, delay, .. } => {
            assert_eq!(delay, Duration::ZERO);
            assert!(record.errors.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_task_handed_back_again_and_again_is_charged_past_the_uncharged_limit() {
    // Each time on a new worker: one that hands an attempt back is stopping.
    let t0 = Instant::now();
    let mut rec = record(1, 1, 0, t0);
    let hand_back = |rec: TaskRecord<&'static str>| {
        let mut l = link(1, 0, t0);
        let attempt = l.assign(rec, t0).attempt;
        l.finish(done(1, attempt, AttemptStatus::Returned), t0)
    };
    for _ in 0..UNCHARGED_ATTEMPTS_MAX {
        match hand_back(rec) {
            Outcome::Requeue { record, .. } if record.errors.is_empty() => rec = record,
            other => panic!("{other:?}"),
        }
    }
    // Charged: its one retry is used.
    match hand_back(rec) {
        Outcome::Requeue { record, .. } if record.errors.len() == 1 => {
            assert!(
                record.errors[0]
                    .reason
                    .contains("does the task stop its own worker"),
                "{:?}",
                record.errors
            );
            rec = record;
        }
        other => panic!("{other:?}"),
    }
    match hand_back(rec) {
        Outcome::Finished { result, .. } => {
            assert_eq!(result.status, TaskStatus::Failed);
        }
        other => panic!("{other:?}"),
    }
}

/// Ticks every 100 ms (as the master's timer does) from `from` up to `to`;
/// returns the first departure.
/// Ticks every 100 ms from `from` to `to` until the worker is let go, its
/// connection bringing nothing meanwhile.
fn tick_until(
    l: &mut WorkerLink<&'static str>,
    from: Duration,
    to: Duration,
    t0: Instant,
) -> Option<Departure> {
    tick_with_segments(l, from, to, t0, &mut 0, 0).map(|(_, d)| d)
}

#[test]
fn silence_past_the_worker_timeout_loses_the_worker() {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    let ms = Duration::from_millis;
    assert!(tick_until(&mut l, ms(100), ms(900), t0).is_none());
    l.heard(t0 + ms(900));
    assert!(
        tick_until(&mut l, ms(1000), ms(1900), t0).is_none(),
        "heard 1000 ms ago at most"
    );
    let lost = tick_until(&mut l, ms(2000), ms(2000), t0);
    assert!(matches!(lost, Some(Departure::HeartbeatLost(d)) if d > TIMING.worker_timeout));
}

/// Ticks every 100 ms from `from` to `to`, feeding the connection's segment
/// count at each as the session does, grown by `per_tick` each time.
fn tick_with_segments(
    l: &mut WorkerLink<&'static str>,
    from: Duration,
    to: Duration,
    t0: Instant,
    segments: &mut u32,
    per_tick: u32,
) -> Option<(Duration, Departure)> {
    let mut at = from;
    while at <= to {
        *segments += per_tick;
        if l.wants_transport(t0 + at) {
            let arrivals = Arrivals {
                data_segments: *segments,
                out_of_order: Some(0),
                bytes_received: None,
            };
            l.transport(arrivals, t0 + at);
        }
        if let Some(d) = l.tick(t0 + at).lost {
            return Some((at, d));
        }
        at += Duration::from_millis(100);
    }
    None
}

#[test]
fn a_worker_whose_frames_are_held_up_behind_a_lost_segment_is_kept_while_its_segments_arrive() {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    let ms = Duration::from_millis;
    let mut segments = 10;
    // No frame for 2.5 s (two and a half timeouts), but segments keep coming.
    let lost = tick_with_segments(&mut l, ms(100), ms(2500), t0, &mut segments, 1);
    assert!(lost.is_none(), "{lost:?}");
    // The hole is repaired: the frames are read, silence is over; a later
    // silence past the timeout is reported again.
    l.heard(t0 + ms(2600));
    assert!(l.tick(t0 + ms(2600)).held_up.is_none());
    let lost = tick_with_segments(&mut l, ms(2700), ms(3600), t0, &mut segments, 1);
    assert!(lost.is_none(), "{lost:?}");
    assert!(l.tick(t0 + ms(3700)).held_up.is_some());
}

#[test]
fn a_held_up_worker_is_let_go_when_its_keeping_runs_out() {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    let ms = Duration::from_millis;
    let mut segments = 10;
    let (at, lost) = tick_with_segments(&mut l, ms(100), ms(10_000), t0, &mut segments, 1)
        .expect("let go in the end");
    assert!(matches!(lost, Departure::HeartbeatLost(_)));
    let cap = TIMING.worker_timeout * HELD_UP_TIMEOUTS_MAX;
    assert!(at > cap && at <= cap + ms(100), "{at:?}");
}

/// A frame of results larger than a slow link moves in five worker-timeouts
/// (8 MiB at 1 Mbit/s): the pong behind it cannot come sooner, and the
/// worker is kept while the frame's bytes arrive in order; once more than
/// the largest frame has come without one read, it is let go.
#[test]
fn a_worker_uploading_a_frame_slower_than_its_keeping_is_kept_while_its_bytes_arrive() {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    let ms = Duration::from_millis;
    let frame = runner::limits::FRAME_BYTES_MAX as u64;
    // 100 KiB every 100 ms: the largest frame takes about 16 s.
    let per_tick = 100 * 1024;
    let mut at = ms(100);
    let (mut segments, mut bytes) = (10u32, 0u64);
    let mut first_read = None;
    let lost = loop {
        segments += 70;
        bytes += per_tick;
        if l.wants_transport(t0 + at) {
            first_read.get_or_insert(bytes);
            l.transport(
                Arrivals {
                    data_segments: segments,
                    out_of_order: Some(0),
                    bytes_received: Some(bytes),
                },
                t0 + at,
            );
        }
        if let Some(d) = l.tick(t0 + at).lost {
            break (at, d);
        }
        at += ms(100);
        assert!(at < ms(60_000), "never let go");
    };
    let cap = TIMING.worker_timeout * HELD_UP_TIMEOUTS_MAX;
    assert!(
        lost.0 > cap * 2,
        "kept past the bound while bytes arrived: {lost:?}"
    );
    assert!(matches!(lost.1, Departure::HeartbeatLost(_)));
    // Let go once more than a frame had come since the silence was first
    // read, at the tick that saw it.
    let came = bytes - first_read.unwrap();
    assert!(
        came > frame && came <= frame + per_tick,
        "{came} bytes in the silence, a frame is {frame}"
    );
}

/// A round trip longer than the heartbeat (a far worker) is measured: the
/// pings sent meanwhile do not replace the one it answers.
#[test]
fn a_round_trip_longer_than_the_heartbeat_is_measured() {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    let ms = Duration::from_millis;
    let first = l.tick(t0).ping.expect("a ping at once").seq;
    for at in [200, 400, 600] {
        l.heard(t0 + ms(at));
        assert!(l.tick(t0 + ms(at)).ping.is_some());
    }
    assert_eq!(l.pong(first, t0 + ms(700)), Some(ms(700)));
    assert_eq!(l.rtt, Some(ms(700)));
}

/// What a session does over a silence that began at `t0`: it wakes when
/// the link asks (10 ms at the soonest, as the session's own floor), reads
/// the connection's counts, which `counts` gives for each moment, and ticks.
/// Returns when the worker was let go, how many ticks ran, and how many
/// reported it kept.
fn silence(
    l: &mut WorkerLink<&'static str>,
    t0: Instant,
    until: Duration,
    counts: impl Fn(Duration) -> Arrivals,
) -> (Option<Duration>, u32, u32) {
    let (mut now, mut ticks, mut reports) = (t0, 0, 0);
    while now - t0 <= until {
        if l.wants_transport(now) {
            l.transport(counts(now - t0), now);
        }
        let t = l.tick(now);
        ticks += 1;
        reports += u32::from(t.held_up.is_some());
        if t.lost.is_some() {
            return (Some(now - t0), ticks, reports);
        }
        now = l.next_wake().max(now + Duration::from_millis(10));
    }
    (None, ticks, reports)
}

/// Counts with `late` segments out of order from `from` on, and no data
/// segment after the first 300 ms: a sender whose retransmission was lost
/// too, backing off with new data queued behind it.
fn behind_a_hole(from: Duration, late: u32) -> impl Fn(Duration) -> Arrivals {
    move |at| Arrivals {
        data_segments: 100 + u32::from(at >= from) * late,
        out_of_order: Some(7 + u32::from(at >= from) * late),
        bytes_received: None,
    }
}

/// [`silence`] after a last frame, with the counts of [`behind_a_hole`]
/// (`hole_from`, 2 segments), and the mark the session read just after the
/// frame.
fn silence_after_a_frame(hole_from: Duration) -> (Option<Duration>, u32, u32) {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    l.heard(t0);
    let counts = behind_a_hole(hole_from, 2);
    l.mark(counts(Duration::ZERO), t0);
    silence(&mut l, t0, Duration::from_secs(20), counts)
}

#[test]
fn a_worker_whose_sender_backs_off_behind_a_hole_is_kept_though_no_segment_arrives() {
    // Two segments it sent after its last frame arrive behind the hole at
    // 250 ms; then nothing, as its TCP backs off (the CI failure: 1003 ms).
    let (lost, _, reports) = silence_after_a_frame(Duration::from_millis(250));
    let lost = lost.expect("let go in the end");
    let cap = TIMING.worker_timeout * HELD_UP_TIMEOUTS_MAX;
    assert!(
        lost > cap && lost <= cap + TIMING.heartbeat,
        "kept until {cap:?} of silence, then let go: {lost:?}"
    );
    assert_eq!(reports, 1, "the keeping is reported once per silence");
}

#[test]
fn out_of_order_segments_read_before_the_last_frame_keep_no_one() {
    // The hole they were behind was repaired, and the frames read: the
    // counts after the frame include them, and nothing comes after.
    let (lost, _, reports) = silence_after_a_frame(Duration::ZERO);
    let lost = lost.expect("let go");
    assert!(
        lost > TIMING.worker_timeout && lost <= TIMING.worker_timeout + TIMING.heartbeat,
        "{lost:?}"
    );
    assert_eq!(reports, 0);
}

#[test]
fn a_worker_kept_past_its_timeout_is_woken_at_its_pings_only() {
    let (_, ticks, _) = silence_after_a_frame(Duration::from_millis(250));
    // One tick per ping over its keeping (the first at 0), one at the
    // timeout and one when the keeping runs out; not one per 10 ms.
    let pings = (TIMING.worker_timeout * HELD_UP_TIMEOUTS_MAX).as_millis()
        / TIMING.heartbeat.as_millis()
        + 1;
    assert!(
        u128::from(ticks) <= pings + 2,
        "{ticks} ticks in {pings} heartbeats"
    );
}

/// How many marks the session reads over 1 s of frames every millisecond
/// (at a 200 ms heartbeat) on a connection with `out_of_order` so far.
fn marks_in_a_second(out_of_order: u32) -> u32 {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    let counts = Arrivals {
        data_segments: 1,
        out_of_order: Some(out_of_order),
        bytes_received: None,
    };
    let mut marks = 0;
    for ms in 0..1000 {
        let now = t0 + Duration::from_millis(ms);
        l.heard(now);
        if l.wants_mark(now) {
            l.mark(counts, now);
            marks += 1;
        }
    }
    marks
}

#[test]
fn a_connection_that_loses_nothing_is_marked_once() {
    assert_eq!(marks_in_a_second(0), 1);
}

#[test]
fn a_lossy_connection_is_marked_at_most_twice_a_heartbeat() {
    assert_eq!(marks_in_a_second(3), 10);
}

#[test]
fn a_worker_whose_connection_brings_nothing_is_let_go_at_its_timeout() {
    // A stopped, frozen or cut-off worker: its segment count stays.
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    let ms = Duration::from_millis;
    let mut segments = 10;
    let (at, _) =
        tick_with_segments(&mut l, ms(100), ms(5000), t0, &mut segments, 0).expect("let go");
    assert_eq!(at, ms(1100));
}

#[test]
fn a_silent_worker_is_let_go_within_its_timeout_and_one_heartbeat_even_by_a_late_timer() {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    // Its last frame comes just after a tick, the worst phase for a sweep.
    let heard = t0 + Duration::from_millis(1);
    l.heard(heard);
    let mut now = t0;
    let lost_at = loop {
        if l.tick(now).lost.is_some() {
            break now;
        }
        let wake = l.next_wake();
        // The tick that finds it silent too long runs 5 ms late, as a busy
        // master's timer does (1.8 ms measured under load).
        now = if wake - heard > TIMING.worker_timeout {
            wake + Duration::from_millis(5)
        } else {
            wake
        };
        assert!(now - t0 < Duration::from_secs(10), "never let go");
    };
    let silent = lost_at - heard;
    assert!(
        silent > TIMING.worker_timeout && silent <= TIMING.worker_timeout + TIMING.heartbeat,
        "let go after {silent:?} of silence; timeout {:?}, heartbeat {:?}, lead {WAKE_LEAD:?}",
        TIMING.worker_timeout,
        TIMING.heartbeat
    );
}

#[test]
fn a_worker_that_answers_is_woken_for_nothing_but_its_pings() {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    let mut now = t0;
    for _ in 0..20 {
        assert!(l.tick(now).ping.is_some(), "every wake is a ping");
        l.heard(now + Duration::from_millis(1));
        let next = l.next_wake();
        assert_eq!(next - now, TIMING.heartbeat);
        now = next;
    }
}

#[test]
fn a_pause_of_the_master_is_not_counted_as_the_workers_silence() {
    // The master was frozen for 5 s (SIGSTOP, a suspended VM): its first tick
    // after that must not evict a worker whose pings wait in the socket.
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    let ms = Duration::from_millis;
    assert!(tick_until(&mut l, ms(100), ms(500), t0).is_none());
    assert!(
        l.tick(t0 + ms(5500)).lost.is_none(),
        "the pause is not silence"
    );
    // A worker that really is silent is still lost, one timeout later.
    let lost = tick_until(&mut l, ms(5600), ms(7000), t0);
    assert!(matches!(lost, Some(Departure::HeartbeatLost(_))));
}

#[test]
fn a_tick_pings_once_per_heartbeat_and_a_pong_gives_the_rtt() {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    let p = l.tick(t0).ping.expect("first tick pings");
    assert!(l.tick(t0 + Duration::from_millis(100)).ping.is_none());
    assert_eq!(
        l.pong(p.seq, t0 + Duration::from_millis(3)),
        Some(Duration::from_millis(3))
    );
    assert_eq!(
        l.pong(p.seq, t0 + Duration::from_millis(4)),
        None,
        "answered once"
    );
    assert!(l.tick(t0 + Duration::from_millis(200)).ping.is_some());
}

#[test]
fn a_lost_workers_attempts_are_requeued_at_once_and_counted() {
    let t0 = Instant::now();
    let mut l = link(2, 0, t0);
    l.assign(record(1, 3, 0, t0), t0);
    l.assign(record(2, 0, 0, t0), t0);
    let mut outs = l.depart(&Departure::ConnectionClosed("eof".into()), t0);
    outs.sort_by_key(|o| match o {
        Outcome::Requeue { record, .. } => record.id,
        Outcome::Finished { result, .. } => result.id,
        Outcome::Stale { result } => result.task_id,
    });
    match &outs[0] {
        Outcome::Requeue { record, delay, .. } => {
            assert_eq!(
                *delay,
                Duration::ZERO,
                "recovery does not wait for a backoff"
            );
            assert_eq!(record.errors.len(), 1);
            assert!(record.errors[0]
                .reason
                .contains("worker w1 lost: connection closed"));
        }
        other => panic!("{other:?}"),
    }
    match &outs[1] {
        Outcome::Finished { result, .. } => {
            assert_eq!(result.status, TaskStatus::Failed, "no retries left")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(l.in_flight(), 0);
}

#[test]
fn an_attempt_far_past_its_timeout_is_cancelled_by_the_master() {
    let t0 = Instant::now();
    let mut l = link(1, 0, t0);
    l.assign(record(1, 1, 500, t0), t0);
    // A worker heard from at every tick, no result.
    for t in (100..=2400).step_by(100) {
        let now = t0 + Duration::from_millis(t);
        l.heard(now);
        assert!(l.tick(now).cancels.is_empty(), "within timeout + grace");
    }
    l.heard(t0 + Duration::from_millis(2600));
    let t = l.tick(t0 + Duration::from_millis(2600));
    assert_eq!(t.cancels.len(), 1);
    assert_eq!((t.cancels[0].task_id, t.cancels[0].attempt), (1, 1));
    assert!(matches!(&t.outcomes[..], [Outcome::Requeue { .. }]));
    assert_eq!(l.in_flight(), 0);
}

/// A master frozen past an attempt's deadline (SIGSTOP, a suspended VM)
/// does not cancel it at its first tick after: the result, sent in time,
/// waits unread in the socket (FAULTS.md, scenario 8).
#[test]
fn a_pause_of_the_master_does_not_cancel_an_attempt_whose_result_waits_unread() {
    let t0 = Instant::now();
    let ms = Duration::from_millis;
    let mut l = link(1, 0, t0);
    l.assign(record(1, 1, 500, t0), t0);
    assert!(tick_until(&mut l, ms(100), ms(400), t0).is_none());
    // Frozen from 400 ms to 20 s; the worker answered at 300 ms.
    let t = l.tick(t0 + ms(20_000));
    assert!(t.cancels.is_empty(), "the pause is not the attempt's time");
    assert!(t.lost.is_none());
    l.heard(t0 + ms(20_001));
    assert!(matches!(
        l.finish(done(1, 1, AttemptStatus::Ok), t0 + ms(20_001)),
        Outcome::Finished { .. }
    ));
}

/// One slot, two prefetched: the second attempt waits on the worker behind a
/// long first one, and its 500 ms timeout (with the master's 2 s grace here)
/// counts from when it can start, not from its hand-out.
#[test]
fn a_prefetched_attempts_timeout_runs_from_when_a_slot_is_free_for_it() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut l = link(1, 2, t0);
    l.assign(record(1, 0, 0, t0), t0);
    l.assign(record(2, 0, 500, t0), t0);
    // Ticks every 100 ms, as a worker heard at each.
    let mut cancelled_at = None;
    for ms in (100..=8_000).step_by(100) {
        if ms == 4_500 {
            assert!(matches!(
                l.finish(done(1, 1, AttemptStatus::Ok), at(ms)),
                Outcome::Finished { .. }
            ));
        }
        l.heard(at(ms));
        let t = l.tick(at(ms));
        if let Some(c) = t.cancels.first() {
            assert_eq!(c.task_id, 2);
            cancelled_at = Some(ms);
            break;
        }
    }
    // Counted from hand-out it would end at 2.5 s; it starts at the tick
    // after the first attempt's result (4.5 s) and ends 2.5 s later.
    assert_eq!(cancelled_at, Some(7_000));
}

#[test]
fn a_worker_that_hands_back_an_attempt_gets_no_more_and_its_goodbye_charges_nothing() {
    let t0 = Instant::now();
    let mut l = link(2, 0, t0);
    l.assign(record(1, 0, 0, t0), t0);
    l.assign(record(2, 0, 0, t0), t0);
    assert!(matches!(
        l.finish(done(1, 1, AttemptStatus::Returned), t0),
        Outcome::Requeue { .. }
    ));
    assert_eq!(l.credit(), 0, "draining");
    let outs = l.depart(&Departure::Goodbye("stopping".into()), t0);
    assert!(matches!(&outs[..], [Outcome::Requeue { record, .. }] if record.errors.is_empty()));
}

#[test]
fn cancelled_tasks_attempts_are_taken_back_and_their_late_results_are_stale() {
    let t0 = Instant::now();
    let mut l = link(3, 0, t0);
    for id in 1..=3 {
        l.assign(record(id, 0, 0, t0), t0);
    }
    assert_eq!(l.credit(), 0);
    let taken = l.cancel(|id| id == 2);
    assert_eq!(taken.len(), 1);
    let (cancel, record) = &taken[0];
    assert_eq!((cancel.task_id, cancel.attempt), (2, 1));
    assert_eq!(record.id, 2);
    assert_eq!(l.credit(), 1, "its slot is free at once");
    assert!(matches!(
        l.finish(done(2, 1, AttemptStatus::Ok), t0),
        Outcome::Stale { .. }
    ));
    assert!(matches!(
        l.finish(done(1, 1, AttemptStatus::Ok), t0),
        Outcome::Finished { .. }
    ));
}
