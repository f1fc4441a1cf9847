//! The string formats stored *inside* Redis values (set members, hash fields
//! and values) that name several ids at once. Each format is built and parsed
//! only here; parsing validates every id, so a value written by an older or
//! hostile process can never smuggle an invalid id into a key or subject.
//!
//! | type | format | where |
//! |---|---|---|
//! | [`ConnMember`] | `<gateway>:<conn>` | room members, a user's connections |
//! | [`TenantUser`] | `<tenant>\|<user>` | a gateway's connections |
//! | [`TenantRoom`] | `<tenant>:<room>` | the rooms a connection is in |
//! | [`TypingEntry`] | `<tenant>\|<room>\|<user>` | typing deadlines |
//! | [`CallEntry`] | `<tenant>\|<call>` | ringing deadlines |
//! | [`CallPartyEntry`] | `<tenant>\|<call>\|<role>` | reconnect-grace deadlines |
//! | [`TicketOwner`] | `<gateway>\|<conn>\|<user>` | matchmaking ticket owners |
//! | [`ReactionField`] | `<seq>\|<emoji>\|<user>` | a room's reactions |
//! | [`PublishedId`] | `<msg_id>\|<user>` | a room's recent client message ids |
//! | [`CreatedRoom`] | `<created_at>\|<room>\|<creator>` | rooms counted by quotas |
//!
//! Tenant, room and gateway ids never contain `|` or `:` (see [`crate::ids`]);
//! a user id may, so it always comes last and is split off whole.

use std::fmt;

use crate::ids::{CallId, GatewayId, RoomId, TenantId, UserId};

/// One connection on one gateway: `<gateway>:<conn>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnMember {
    pub gw: GatewayId,
    pub conn: u64,
}

impl ConnMember {
    pub fn new(gw: &GatewayId, conn: u64) -> Self {
        Self {
            gw: gw.clone(),
            conn,
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let (gw, conn) = s.rsplit_once(':')?;
        Some(Self {
            gw: GatewayId::parse(gw).ok()?,
            conn: conn.parse().ok()?,
        })
    }
}

impl fmt::Display for ConnMember {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.gw, self.conn)
    }
}

/// The owner of a connection: `<tenant>|<user>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantUser {
    pub tenant: TenantId,
    pub user: UserId,
}

impl TenantUser {
    pub fn parse(s: &str) -> Option<Self> {
        let (t, u) = s.split_once('|')?;
        Some(Self {
            tenant: TenantId::parse(t).ok()?,
            user: UserId::parse(u).ok()?,
        })
    }
}

impl fmt::Display for TenantUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}", self.tenant, self.user)
    }
}

/// One room of one app: `<tenant>:<room>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantRoom {
    pub tenant: TenantId,
    pub room: RoomId,
}

impl TenantRoom {
    pub fn new(tenant: &TenantId, room: &RoomId) -> Self {
        Self {
            tenant: tenant.clone(),
            room: room.clone(),
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        let (t, r) = s.split_once(':')?;
        Some(Self {
            tenant: TenantId::parse(t).ok()?,
            room: RoomId::parse(r).ok()?,
        })
    }
}

impl fmt::Display for TenantRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.tenant, self.room)
    }
}

/// Someone typing in a room: `<tenant>|<room>|<user>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypingEntry {
    pub tenant: TenantId,
    pub room: RoomId,
    pub user: UserId,
}

impl TypingEntry {
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '|');
        Some(Self {
            tenant: TenantId::parse(parts.next()?).ok()?,
            room: RoomId::parse(parts.next()?).ok()?,
            user: UserId::parse(parts.next()?).ok()?,
        })
    }
}

impl fmt::Display for TypingEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}|{}", self.tenant, self.room, self.user)
    }
}

/// A call with a deadline: `<tenant>|<call>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallEntry {
    pub tenant: TenantId,
    pub call: CallId,
}

impl CallEntry {
    pub fn parse(s: &str) -> Option<Self> {
        let (t, c) = s.split_once('|')?;
        Some(Self {
            tenant: TenantId::parse(t).ok()?,
            call: CallId::parse(c).ok()?,
        })
    }
}

impl fmt::Display for CallEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}", self.tenant, self.call)
    }
}

/// A side of a call; also the prefix of that side's fields in the call's
/// hash (`caller_conn`, `callee_grace`…).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallRole {
    Caller,
    Callee,
}

impl CallRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Caller => "caller",
            Self::Callee => "callee",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "caller" => Some(Self::Caller),
            "callee" => Some(Self::Callee),
            _ => None,
        }
    }

    /// The other side.
    pub fn other(self) -> Self {
        match self {
            Self::Caller => Self::Callee,
            Self::Callee => Self::Caller,
        }
    }
}

impl fmt::Display for CallRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One party of a call with a deadline: `<tenant>|<call>|<role>`. Both
/// parties of a call may be in their reconnect grace at once, each with
/// their own deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallPartyEntry {
    pub tenant: TenantId,
    pub call: CallId,
    pub role: CallRole,
}

impl CallPartyEntry {
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '|');
        Some(Self {
            tenant: TenantId::parse(parts.next()?).ok()?,
            call: CallId::parse(parts.next()?).ok()?,
            role: CallRole::parse(parts.next()?)?,
        })
    }
}

impl fmt::Display for CallPartyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}|{}", self.tenant, self.call, self.role)
    }
}

/// The connection that owns a matchmaking ticket: `<gateway>|<conn>|<user>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketOwner {
    pub gw: GatewayId,
    pub conn: u64,
    pub user: UserId,
}

impl TicketOwner {
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '|');
        Some(Self {
            gw: GatewayId::parse(parts.next()?).ok()?,
            conn: parts.next()?.parse().ok()?,
            user: UserId::parse(parts.next()?).ok()?,
        })
    }
}

impl fmt::Display for TicketOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}|{}", self.gw, self.conn, self.user)
    }
}

/// One user's reaction on one message: `<seq>|<emoji>|<user>`. Emojis are
/// checked by the rooms service (no `|`, no whitespace, at most 32 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReactionField {
    pub seq: u64,
    pub emoji: String,
    pub user: UserId,
}

impl ReactionField {
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '|');
        Some(Self {
            seq: parts.next()?.parse().ok()?,
            emoji: parts.next().filter(|e| !e.is_empty())?.to_owned(),
            user: UserId::parse(parts.next()?).ok()?,
        })
    }

    /// The `HSCAN` pattern matching every reaction on message `seq`.
    pub fn pattern_for_seq(seq: u64) -> String {
        format!("{seq}|*")
    }
}

impl fmt::Display for ReactionField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}|{}", self.seq, self.emoji, self.user)
    }
}

/// A message id chosen by a client to make a publish safe to retry: 1 to
/// [`ClientMsgId::MAX_LEN`] characters of `[A-Za-z0-9_.:-]` (never `|`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientMsgId(String);

impl ClientMsgId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Option<Self> {
        let ok = (1..=Self::MAX_LEN).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClientMsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client message id as one user sent it in a room: `<msg_id>|<user>`.
/// Two users may pick the same id; with the user in the field they never
/// meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedId {
    pub msg_id: ClientMsgId,
    pub user: UserId,
}

impl PublishedId {
    pub fn parse(s: &str) -> Option<Self> {
        let (m, u) = s.split_once('|')?;
        Some(Self {
            msg_id: ClientMsgId::parse(m)?,
            user: UserId::parse(u).ok()?,
        })
    }
}

impl fmt::Display for PublishedId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}|{}", self.msg_id, self.user)
    }
}

/// A room as the room quotas count it: `<created_at>|<room>|<creator>`
/// (`creator` empty for rooms another service made). The creation time
/// tells this room from a later one with the same id: the entry stands for
/// a room that exists exactly while the room's meta has this `created_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedRoom {
    pub created_at: u64,
    pub room: RoomId,
    /// The user whose `rooms_created_per_user` quota it counts against.
    pub creator: Option<UserId>,
}

impl CreatedRoom {
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '|');
        Some(Self {
            created_at: parts.next()?.parse().ok()?,
            room: RoomId::parse(parts.next()?).ok()?,
            creator: match parts.next()? {
                "" => None,
                u => Some(UserId::parse(u).ok()?),
            },
        })
    }
}

impl fmt::Display for CreatedRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let creator = self.creator.as_ref().map_or("", UserId::as_str);
        write!(f, "{}|{}|{}", self.created_at, self.room, creator)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<T, E: fmt::Display>(r: Result<T, E>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn formats_round_trip_even_with_separators_in_user_ids() {
        let gw = ok(GatewayId::parse("gw-1"));
        let t = ok(TenantId::parse("app"));
        let r = ok(RoomId::parse("room_1"));
        let u = ok(UserId::parse("a|b:c@example.com"));
        let cm = ConnMember::new(&gw, 42);
        assert_eq!(cm.to_string(), "gw-1:42");
        assert_eq!(ConnMember::parse(&cm.to_string()), Some(cm));
        let tu = TenantUser {
            tenant: t.clone(),
            user: u.clone(),
        };
        assert_eq!(TenantUser::parse(&tu.to_string()), Some(tu));
        let tr = TenantRoom::new(&t, &r);
        assert_eq!(tr.to_string(), "app:room_1");
        assert_eq!(TenantRoom::parse(&tr.to_string()), Some(tr));
        let te = TypingEntry {
            tenant: t.clone(),
            room: r.clone(),
            user: u.clone(),
        };
        assert_eq!(TypingEntry::parse(&te.to_string()), Some(te));
        let ce = CallEntry {
            tenant: t.clone(),
            call: ok(CallId::parse("c123")),
        };
        assert_eq!(CallEntry::parse(&ce.to_string()), Some(ce.clone()));
        for role in [CallRole::Caller, CallRole::Callee] {
            assert_eq!(CallRole::parse(role.as_str()), Some(role));
            assert_ne!(role.other(), role);
            let cp = CallPartyEntry {
                tenant: t.clone(),
                call: ce.call.clone(),
                role,
            };
            assert_eq!(cp.to_string(), format!("app|c123|{role}"));
            assert_eq!(CallPartyEntry::parse(&cp.to_string()), Some(cp));
        }
        let to = TicketOwner {
            gw: gw.clone(),
            conn: 7,
            user: u.clone(),
        };
        assert_eq!(TicketOwner::parse(&to.to_string()), Some(to));
        let rf = ReactionField {
            seq: 3,
            emoji: "thumbs_up".into(),
            user: u.clone(),
        };
        assert_eq!(ReactionField::parse(&rf.to_string()), Some(rf));
        let pi = PublishedId {
            msg_id: ok(ClientMsgId::parse("c-1:x.y_Z").ok_or("msg id")),
            user: ok(UserId::parse("a|b:c@example.com")),
        };
        assert_eq!(pi.to_string(), "c-1:x.y_Z|a|b:c@example.com");
        assert_eq!(PublishedId::parse(&pi.to_string()), Some(pi));
        for creator in [Some(u.clone()), None] {
            let cr = CreatedRoom {
                created_at: 1_795_474_419_095,
                room: r.clone(),
                creator,
            };
            assert_eq!(CreatedRoom::parse(&cr.to_string()), Some(cr));
        }
    }

    #[test]
    fn client_msg_ids_are_short_and_plain() {
        assert!(ClientMsgId::parse(&"a".repeat(ClientMsgId::MAX_LEN)).is_some());
        for bad in [
            String::new(),
            "a".repeat(ClientMsgId::MAX_LEN + 1),
            "a|b".into(),
            "a b".into(),
            "a*".into(),
            "{x}".into(),
            "é".into(),
            "a\n".into(),
        ] {
            assert_eq!(ClientMsgId::parse(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn hostile_values_are_refused() {
        for bad in ["", "gw", "gw:", ":1", "g.w:1", "g>:1", "gw:-1", "gw:x"] {
            assert_eq!(ConnMember::parse(bad), None, "{bad:?}");
        }
        for bad in ["", "app", "a.b|u", "app|", "*|u"] {
            assert_eq!(TenantUser::parse(bad), None, "{bad:?}");
        }
        for bad in [
            "", "app", "app:", ":r", "app:r:x", "a.b:r", "app:r>", "app|r",
        ] {
            assert_eq!(TenantRoom::parse(bad), None, "{bad:?}");
        }
        for bad in ["app|r", "app|r.x|u", "a pp|r|u", "app|r|"] {
            assert_eq!(TypingEntry::parse(bad), None, "{bad:?}");
        }
        for bad in ["app", "app|c.1", "app|c>", "|c"] {
            assert_eq!(CallEntry::parse(bad), None, "{bad:?}");
        }
        for bad in [
            "app|c1",
            "app|c1|",
            "app|c1|any",
            "app|c.1|caller",
            "a.b|c1|callee",
            "app|c1|caller|x",
        ] {
            assert_eq!(CallPartyEntry::parse(bad), None, "{bad:?}");
        }
        for bad in ["gw|1", "gw|x|u", "g*|1|u", "gw|1|"] {
            assert_eq!(TicketOwner::parse(bad), None, "{bad:?}");
        }
        for bad in ["1|x", "x|e|u", "1||u", "1|e|"] {
            assert_eq!(ReactionField::parse(bad), None, "{bad:?}");
        }
        for bad in ["m", "m|", "|u", "m x|u", "m|a b"] {
            assert_eq!(PublishedId::parse(bad), None, "{bad:?}");
        }
        for bad in ["1|r", "x|r|", "1|r.x|", "1|r|a b", "-1|r|u"] {
            assert_eq!(CreatedRoom::parse(bad), None, "{bad:?}");
        }
    }
}
