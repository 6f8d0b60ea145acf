#![allow(clippy::unwrap_used)]
//! Tiny scenarios with a fixed, known trace, whose numbers can be worked out by hand.

use gaia_sim::Scenario;

/// One request at 0 s into an empty region; a buffer of 0 starts one server for it when
/// it is unmet, and that server takes exactly 10 s to start. Worlds outlive the minute.
fn one_request(deadline: &str) -> Scenario {
    Scenario::from_yaml(&format!(
        "
name: one-request
start: 2026-11-24T12:00:00Z
duration: 1m
step: 100ms
deadline: {deadline}
worldLifetime: 100000h
serverStart: {{ min: 10s, max: 10s }}
regions: [{{ name: eu, arrivals: [0s] }}]
policies:
  - name: buffer-0
    autoscaler: {{ policy: {{ buffer: {{ bufferSize: 0, maxReplicas: 5 }} }} }}
"
    ))
    .unwrap()
}

#[test]
fn a_request_waits_exactly_for_the_server_it_brought_up() {
    let s = one_request("10s");
    let r = gaia_sim::run(&s, &s.policies[0]).unwrap();
    assert_eq!((r.requests, r.allocated, r.waited, r.failed, r.unfinished), (1, 1, 1, 0, 0));
    assert_eq!((r.wait_p50_ms, r.wait_p99_ms, r.wait_max_ms), (10_000, 10_000, 10_000));
    assert_eq!((r.starts, r.stops, r.peak_servers), (1, 0, 1));
    // One server, Scheduled at 0 s, lives the whole minute.
    assert_eq!(r.server_hours, 60.0 / 3600.0);
    let at = |secs: u64| r.samples.iter().find(|s| s.offset.as_secs() == secs).unwrap().regions[0];
    assert_eq!((at(0).servers, at(0).used_worlds, at(0).desired), (1, 0, 1));
}

#[test]
fn the_same_request_fails_with_a_5s_deadline() {
    let s = one_request("5s");
    let r = gaia_sim::run(&s, &s.policies[0]).unwrap();
    assert_eq!((r.requests, r.allocated, r.waited, r.failed, r.unfinished), (1, 0, 1, 1, 0));
    assert_eq!(r.wait_max_ms, 0, "only allocated requests have a wait");
    // The autoscaler still counts the request as waiting (it cannot know it gave up)
    // until WAIT_LIMIT (60 s): the server stays the whole minute.
    assert_eq!((r.starts, r.stops), (1, 0));
    assert_eq!(r.server_hours, 60.0 / 3600.0);
}
