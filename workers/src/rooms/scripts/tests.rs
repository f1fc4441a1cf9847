//! Decoding of the rooms scripts' replies: every status a script documents
//! becomes its typed result, anything else is a script error naming it.

use deadpool_redis::redis::Value;

use super::history::{Entry, entries};
use super::*;
use crate::error::ErrorKind;

fn b(s: &str) -> Value {
    Value::BulkString(s.as_bytes().to_vec())
}

fn script_error<T: std::fmt::Debug>(r: Result<T, ServiceError>, name: &str) {
    match r {
        Err(ServiceError::Script { script, .. }) => assert_eq!(script, name),
        other => panic!("expected a {name} script error, got {other:?}"),
    }
}

#[test]
fn create_and_join_statuses_decode() {
    assert_eq!(Create::decode(1).ok(), Some(Create::Created));
    assert_eq!(Create::decode(0).ok(), Some(Create::Exists));
    script_error(Create::decode(-1), "CREATE");
    assert_eq!(
        Join::decode((1, 7, 2, 1)).ok(),
        Some(Join::Joined {
            head_seq: 7,
            members: 2,
            new_user: true
        })
    );
    assert_eq!(Join::decode((-1, 0, 0, 0)).ok(), Some(Join::NoRoom));
    assert_eq!(Join::decode((-2, 0, 0, 0)).ok(), Some(Join::Full));
    assert_eq!(Join::decode((-3, 0, 0, 0)).ok(), Some(Join::Forbidden));
    script_error(Join::decode((-4, 0, 0, 0)), "JOIN");
    script_error(Join::decode((1, -1, 0, 0)), "JOIN");
    script_error(Join::decode((1, 0, 0, 2)), "JOIN");
}

#[test]
fn quota_statuses_decode() {
    assert_eq!(Reserve::decode(1).ok(), Some(Reserve::Added));
    assert_eq!(Reserve::decode(0).ok(), Some(Reserve::Full));
    script_error(Reserve::decode(2), "RESERVE");
    assert_eq!(ConnRoom::decode(2).ok(), Some(ConnRoom::Already));
    assert_eq!(ConnRoom::decode(1).ok(), Some(ConnRoom::Added));
    assert_eq!(ConnRoom::decode(0).ok(), Some(ConnRoom::Full));
    script_error(ConnRoom::decode(-1), "CONN_ROOM");
}

#[test]
fn leave_names_the_user_whose_last_connection_left() {
    let left = Leave::decode((1, 3, 1, "a|b:c".into())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(left.members(), 3);
    assert!(matches!(left, Leave::Left { user_gone: Some(u), .. } if u.as_str() == "a|b:c"));
    assert_eq!(
        Leave::decode((1, 3, 0, "u".into())).ok(),
        Some(Leave::Left {
            members: 3,
            user_gone: None
        })
    );
    assert_eq!(
        Leave::decode((0, 4, 0, String::new())).ok(),
        Some(Leave::NotIn { members: 4 })
    );
    // A user id that is not one never reaches a subject or a key.
    script_error(Leave::decode((1, 0, 1, "a b".into())), "LEAVE");
    script_error(Leave::decode((2, 0, 0, String::new())), "LEAVE");
}

#[test]
fn publish_mark_and_react_statuses_decode() {
    assert_eq!(
        Publish::decode((1, 5, "{}".into())).ok(),
        Some(Publish::Stored {
            seq: 5,
            message: "{}".into()
        })
    );
    assert_eq!(
        Publish::decode((0, 5, "1795474419095".into())).ok(),
        Some(Publish::Duplicate {
            seq: 5,
            ts_ms: 1_795_474_419_095
        })
    );
    assert_eq!(
        Publish::decode((-4, 0, String::new())).ok(),
        Some(Publish::NotMember)
    );
    script_error(Publish::decode((1, 0, String::new())), "PUBLISH");
    script_error(Publish::decode((0, 0, "1".into())), "PUBLISH");
    script_error(Publish::decode((0, 5, "soon".into())), "PUBLISH");
    script_error(Publish::decode((1, -1, "{}".into())), "PUBLISH");
    script_error(Publish::decode((2, 5, "{}".into())), "PUBLISH");
    assert_eq!(
        Mark::decode((1, 4, 3, 1)).ok(),
        Some(Mark::Marked {
            delivered: 4,
            read: 3,
            changed: true
        })
    );
    assert_eq!(Mark::decode((-4, 0, 0, 0)).ok(), Some(Mark::NotMember));
    script_error(Mark::decode((-1, 0, 0, 0)), "MARK");
    assert_eq!(
        React::decode((1, 0)).ok(),
        Some(React::Done { changed: false })
    );
    assert_eq!(React::decode((-4, 0)).ok(), Some(React::NotMember));
    assert_eq!(React::decode((-5, 0)).ok(), Some(React::NoMessage));
    script_error(React::decode((1, 5)), "REACT");
}

#[test]
fn stream_entries_parse() {
    let v = Value::Array(vec![Value::Array(vec![
        b("7-0"),
        Value::Array(vec![b("t"), b("123"), b("m"), b("{}")]),
    ])]);
    let want = Entry {
        seq: 7,
        t_ms: 123,
        message: "{}".to_owned(),
        no_echo_to: None,
    };
    assert_eq!(entries(&v).ok(), Some(vec![want.clone()]));
    // The sender's connection, kept for a message sent without echo.
    let own = Value::Array(vec![Value::Array(vec![
        b("8-0"),
        Value::Array(vec![b("t"), b("1"), b("m"), b("{}"), b("o"), b("gw-1:4")]),
    ])]);
    assert_eq!(
        entries(&own)
            .ok()
            .and_then(|e| e.into_iter().next())
            .and_then(|e| e.no_echo_to),
        switchboard_shared::members::ConnMember::parse("gw-1:4")
    );
    assert!(entries(&Value::Nil).is_ok_and(|e| e.is_empty()));
    let page = Value::Array(vec![Value::Int(1), Value::Int(9), v.clone(), v]);
    assert_eq!(
        Read::decode(&page).ok(),
        Some(Read::Page {
            head_seq: 9,
            oldest: Some(want.clone()),
            entries: vec![want]
        })
    );
    let none = Value::Array(vec![
        Value::Int(-1),
        Value::Int(0),
        Value::Array(vec![]),
        Value::Array(vec![]),
    ]);
    assert_eq!(Read::decode(&none).ok(), Some(Read::NoRoom));
}

#[test]
fn malformed_history_is_a_script_error() {
    let entry = |id: &str, fields: Vec<Value>| {
        Value::Array(vec![Value::Array(vec![b(id), Value::Array(fields)])])
    };
    for bad in [
        entry("x-0", vec![b("t"), b("1"), b("m"), b("{}")]),
        entry("1-0", vec![b("t"), b("1")]),
        entry("1-0", vec![b("m"), b("{}")]),
        entry("1-0", vec![b("t"), b("-1"), b("m"), b("{}")]),
        entry("1-0", vec![b("t")]),
        Value::Int(3),
    ] {
        script_error(entries(&bad), "READ");
    }
    let short = Value::Array(vec![Value::Int(1), Value::Int(0)]);
    script_error(Read::decode(&short), "READ");
    let e = Read::decode(&Value::Nil).map_err(|e| e.kind());
    assert_eq!(e, Err(ErrorKind::Internal));
}
