#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns
//! Session resume, from real WebSocket clients of a standalone server: a client whose TCP
//! connection is cut comes back on a new one with `Resume` and is the same member (same
//! entity, never seen to leave), and every input the world applied is answered exactly
//! once across the two connections; past the grace, or with a bad token, it is refused.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::SinkExt;
use gaia_api::protocol::{InputOutcome, close, encode_client};
use gaia_api::town::{Action, Change, ClientMsg, ServerMsg, Snapshot};
use gaia_gameserver::Config;
use gaia_testkit::tokens;
use gaia_testkit::ws::{self, Closed, Received, SILENCE, Ws, send};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::DropGuard;

use common::Server;

const NAME: &str = "gs-resume";

async fn server(config: Config) -> (String, DropGuard) {
    let s = Server::quiet(NAME, config).await;
    (s.url, s.shutdown.drop_guard())
}

fn token(world: &str, player: &str) -> String {
    tokens::join(NAME, world, player)
}

async fn recv(ws: &mut Ws) -> Received<Snapshot, Change> {
    ws::recv(ws).await
}

/// Sends `first` on a new connection; the Welcome's `you` and resume token.
async fn welcome(url: &str, first: ClientMsg) -> Result<(Ws, u32, String), Closed> {
    let mut ws = ws::connect(url).await;
    send(&mut ws, &first).await;
    let welcome = ws::welcome::<Snapshot, Change>(&mut ws, SILENCE).await?;
    Ok((ws, welcome.you, welcome.resume))
}

fn say(seq: u32) -> ClientMsg {
    ClientMsg::Input { seq, action: Action::Say { text: format!("r-{seq}") } }
}

#[tokio::test]
async fn a_cut_connection_resumes_as_the_same_member_with_each_result_once() {
    let (url, _stop) = server(Config::default()).await;
    let (mut watcher, me, _) = welcome(&url, ClientMsg::Join { token: token("w1", "watcher") }).await.unwrap();
    let (mut ws, you, resume) = welcome(&url, ClientMsg::Join { token: token("w1", "p") }).await.unwrap();
    assert!(!resume.is_empty(), "the Welcome carries a resume token");

    // Five inputs, then the TCP connection goes without a close frame.
    for seq in 1..=5 {
        ws.feed(Message::Binary(encode_client(&say(seq)).into())).await.unwrap();
    }
    ws.flush().await.unwrap();
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Inputs sent on no connection at all: never seen by the server.
    let awaiting: Vec<u32> = (1..=7).collect();
    let (mut ws, again, _) = welcome(&url, ClientMsg::Resume { token: resume, awaiting }).await.unwrap();
    assert_eq!(again, you, "the same entity");
    let mut results: BTreeMap<u32, Vec<InputOutcome>> = BTreeMap::new();
    send(&mut ws, &ClientMsg::Input { seq: 8, action: Action::Say { text: "r-8".into() } }).await;
    while !results.contains_key(&8) {
        if let ServerMsg::InputResult { seq, outcome, .. } = recv(&mut ws).await.unwrap() {
            results.entry(seq).or_default().push(outcome);
        }
    }
    // Anything still to come would be a second result.
    let late = tokio::time::timeout(Duration::from_millis(300), async {
        loop {
            if let Ok(ServerMsg::InputResult { seq, .. }) = recv(&mut ws).await {
                return seq;
            }
        }
    });
    assert!(late.await.is_err(), "a result came twice");
    for seq in 1..=8 {
        assert_eq!(results.get(&seq).map(Vec::len), Some(1), "seq {seq}: {results:?}");
    }
    for seq in 6..=7 {
        assert!(matches!(&results[&seq][0], InputOutcome::Rejected { reason } if reason.contains("never reached")));
    }

    // The watcher saw p's sayings of the applied inputs, and p never left.
    send(&mut watcher, &ClientMsg::Input { seq: 1, action: Action::Say { text: "marker".into() } }).await;
    let mut said = Vec::new();
    'read: loop {
        if let ServerMsg::Delta { changes, .. } = recv(&mut watcher).await.unwrap() {
            for change in changes {
                match change {
                    Change::Left { id } if id == you => panic!("the resumed member was seen to leave"),
                    Change::Said { id, text } if id == you => said.push(text),
                    Change::Said { id, text } if id == me && text == "marker" => break 'read,
                    _ => {}
                }
            }
        }
    }
    let ok: Vec<String> =
        results.iter().filter(|(_, r)| r[0] == InputOutcome::Ok).map(|(seq, _)| format!("r-{seq}")).collect();
    assert_eq!(said, ok, "applied inputs are the ones answered Ok");
}

#[tokio::test]
async fn a_resume_past_the_grace_or_with_a_bad_token_is_refused() {
    let (url, _stop) = server(Config { resume_grace: Duration::from_millis(200), ..Default::default() }).await;
    let (ws, _, resume) = welcome(&url, ClientMsg::Join { token: token("w1", "p") }).await.unwrap();
    let (_other, _, _) = welcome(&url, ClientMsg::Join { token: token("w1", "keeps-the-world") }).await.unwrap();
    drop(ws);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let refused = welcome(&url, ClientMsg::Resume { token: resume.clone(), awaiting: vec![] }).await.unwrap_err();
    assert_eq!(refused.0, close::WORLD_UNAVAILABLE, "{refused:?}");
    let join_token = token("w1", "q");
    let refused = welcome(&url, ClientMsg::Resume { token: join_token, awaiting: vec![] }).await.unwrap_err();
    assert_eq!(refused.0, close::BAD_TOKEN, "a join token is no resume token: {refused:?}");
}

#[tokio::test]
async fn a_result_long_past_is_sent_again_not_called_never_received() {
    let rate = std::num::NonZeroU32::new(10_000).unwrap();
    let config = Config { client_frame_rate: rate, client_frame_burst: rate, ..Default::default() };
    let (url, _stop) = server(config).await;
    let (mut ws, you, resume) = welcome(&url, ClientMsg::Join { token: token("w1", "p") }).await.unwrap();
    let (_other, _, _) = welcome(&url, ClientMsg::Join { token: token("w1", "keeps-the-world") }).await.unwrap();
    // 200 inputs, all answered: far more results than a count-bounded ring would keep.
    // Ten at a time, so that no tick queues more than the member's queue holds.
    for batch in 0..20 {
        for seq in batch * 10 + 1..=batch * 10 + 10 {
            ws.feed(Message::Binary(encode_client(&say(seq)).into())).await.unwrap();
        }
        ws.flush().await.unwrap();
        let mut answered = 0;
        while answered < 10 {
            if let ServerMsg::InputResult { .. } = recv(&mut ws).await.unwrap() {
                answered += 1;
            }
        }
    }
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // As if the first result had been lost on the way: it was applied, so it comes again.
    let (mut ws, again, _) = welcome(&url, ClientMsg::Resume { token: resume, awaiting: vec![1] }).await.unwrap();
    assert_eq!(again, you);
    loop {
        if let ServerMsg::InputResult { seq, tick, outcome } = recv(&mut ws).await.unwrap() {
            assert_eq!((seq, outcome), (1, InputOutcome::Ok));
            assert!(tick > 0, "the tick that applied it");
            break;
        }
    }
}
