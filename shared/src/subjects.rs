//! NATS subject naming: the one place that knows the subject scheme.
//!
//! | subject | direction | purpose |
//! |---|---|---|
//! | `sb.svc.<service>.<op>` | gateway → worker queue group | a client request |
//! | `sb.gw.<gateway>.c.<conn>` | worker → gateway | push to one connection |
//! | `sb.gw.<gateway>.c.<conn>.<req>` | worker → gateway | reply to request `<req>` |
//! | `sb.gw.<gateway>.r.<tenant>.<room>` | rooms, presence → each gateway with members | room fan-out |
//! | `sb.tenant.<tenant>` | workers → every gateway with that app | app-wide pushes |
//! | `sb.presence.<tenant>.<user>` | presence worker → watchers' gateways | one user's presence |
//! | `sb.evt.conn` | gateway → workers | connect / disconnect / heartbeat |
//! | `sb.api.notifications.send` | app backends → notifications | send a notification |
//! | `sb.ctl.gw.<gateway>.<cmd>` | workers, operators → one gateway | control requests ([`GatewayCommand`]) |
//! | `sb.ctl.gw.all.<cmd>` | admin → every gateway | scatter-gather control requests |
//!
//! Every argument is a validated id type, so no caller can build a subject
//! with wildcards or extra tokens in it.

use crate::ids::{GatewayId, RoomId, TenantId, UserId};

/// Connection lifecycle events, gateway → workers.
pub const CONN_EVENTS: &str = "sb.evt.conn";

/// A control request to one gateway, answered by that gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayCommand {
    /// A page of its live connections (`bus.ConnPageRequest` →
    /// `bus.ConnPage`), for repairing the cluster's view of them.
    Conns,
    /// It was declared dead: close every client (1012) so they reconnect
    /// and register anew.
    Reset,
    /// What it holds now (empty request → `bus.GatewayStats`).
    Stats,
    /// Close connections chosen by the operator (`bus.KickRequest` →
    /// `bus.KickReply`).
    Kick,
    /// Drain as on SIGTERM and exit (empty request → `bus.DrainReply`).
    /// Never obeyed on the `all` subject.
    Drain,
}

impl GatewayCommand {
    pub const ALL: [GatewayCommand; 5] = [
        Self::Conns,
        Self::Reset,
        Self::Stats,
        Self::Kick,
        Self::Drain,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Conns => "conns",
            Self::Reset => "reset",
            Self::Stats => "stats",
            Self::Kick => "kick",
            Self::Drain => "drain",
        }
    }
}

/// The token that addresses every gateway in a control subject.
pub const ALL_GATEWAYS: &str = "all";

/// The subject of control command `cmd` to gateway `gw`.
pub fn gateway_control(gw: &GatewayId, cmd: GatewayCommand) -> String {
    format!("sb.ctl.gw.{gw}.{}", cmd.as_str())
}

/// Every control command to gateway `gw`.
pub fn gateway_control_wildcard(gw: &GatewayId) -> String {
    format!("sb.ctl.gw.{gw}.*")
}

/// Control command `cmd` to every gateway (scatter-gather: each answers).
pub fn gateway_control_all(cmd: GatewayCommand) -> String {
    format!("sb.ctl.gw.{ALL_GATEWAYS}.{}", cmd.as_str())
}

/// Every control command to all gateways.
pub fn gateway_control_all_wildcard() -> String {
    format!("sb.ctl.gw.{ALL_GATEWAYS}.*")
}

/// Who a control subject addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlScope {
    /// This gateway by its id.
    One,
    /// Every gateway (`sb.ctl.gw.all.<cmd>`).
    All,
}

/// The command a control subject of gateway `gw` names, if any.
pub fn parse_gateway_control(gw: &GatewayId, subject: &str) -> Option<GatewayCommand> {
    parse_gateway_control_scoped(gw, subject).map(|(cmd, _)| cmd)
}

/// The command a control subject received by gateway `gw` names, and
/// whether it was addressed to it alone or to every gateway.
pub fn parse_gateway_control_scoped(
    gw: &GatewayId,
    subject: &str,
) -> Option<(GatewayCommand, ControlScope)> {
    let rest = subject.strip_prefix("sb.ctl.gw.")?;
    let (cmd, scope) = match rest
        .strip_prefix(gw.as_str())
        .and_then(|r| r.strip_prefix('.'))
    {
        Some(cmd) => (cmd, ControlScope::One),
        None => (
            rest.strip_prefix(ALL_GATEWAYS)?.strip_prefix('.')?,
            ControlScope::All,
        ),
    };
    GatewayCommand::ALL
        .into_iter()
        .find(|c| c.as_str() == cmd)
        .map(|c| (c, scope))
}

/// The backend API of the notifications service: trusted backends send
/// notifications with a NATS request here (a queue group of the service).
pub const NOTIFICATIONS_SEND: &str = "sb.api.notifications.send";

/// A request subject for `service` and `op`. Both come from the gateway's own
/// validation (see [`is_op_name`]), never from raw client text.
pub fn service_op(service: &str, op: &str) -> String {
    format!("sb.svc.{service}.{op}")
}

/// Everything a service's queue group listens to.
pub fn service_wildcard(service: &str) -> String {
    format!("sb.svc.{service}.*")
}

/// Internal op through which a gateway recovers a feed's missed messages.
/// Client ops can never start with `_` (see [`is_op_name`]).
pub const REPLAY_OP: &str = "_replay";

/// A gateway's single wildcard subscription.
pub fn gateway_wildcard(gw: &GatewayId) -> String {
    format!("sb.gw.{gw}.>")
}

/// Pushes to one connection.
pub fn conn(gw: &GatewayId, conn: u64) -> String {
    format!("sb.gw.{gw}.c.{conn}")
}

/// Replies to one request of one connection.
pub fn conn_reply(gw: &GatewayId, conn: u64, req: u32) -> String {
    format!("sb.gw.{gw}.c.{conn}.{req}")
}

/// What a subject under `sb.gw.<gateway>.` addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayTarget {
    Push { conn: u64 },
    Reply { conn: u64, req: u32 },
}

/// Parses a subject received on [`gateway_wildcard`]; `None` for anything else.
pub fn parse_gateway_subject(gw: &GatewayId, subject: &str) -> Option<GatewayTarget> {
    let rest = subject.strip_prefix("sb.gw.")?;
    let rest = rest.strip_prefix(gw.as_str())?;
    let rest = rest.strip_prefix(".c.")?;
    let mut parts = rest.split('.');
    let conn = parts.next()?.parse().ok()?;
    match (parts.next(), parts.next()) {
        (None, _) => Some(GatewayTarget::Push { conn }),
        (Some(req), None) => Some(GatewayTarget::Reply {
            conn,
            req: req.parse().ok()?,
        }),
        _ => None,
    }
}

/// A room's feed name (`sb.room.<tenant>.<room>`): what a join's `Interest`
/// and a leave's detach name, and the key of the gateway's feed. Nothing is
/// published or subscribed on it: a room's pushes are addressed to each
/// gateway holding members ([`room_push`]).
pub fn room(tenant: &TenantId, room: &RoomId) -> String {
    format!("sb.room.{tenant}.{room}")
}

/// A room's pushes to one gateway that holds members of it (under the
/// gateway's wildcard subscription, so a gateway needs no subscription per
/// room).
pub fn room_push(gw: &GatewayId, tenant: &TenantId, room: &RoomId) -> String {
    format!("sb.gw.{gw}.r.{tenant}.{room}")
}

/// The room a subject received on [`gateway_wildcard`] of `gw` addresses
/// ([`room_push`]); `None` for anything else, ids that do not validate
/// included.
pub fn parse_room_push(gw: &GatewayId, subject: &str) -> Option<(TenantId, RoomId)> {
    let rest = subject
        .strip_prefix("sb.gw.")?
        .strip_prefix(gw.as_str())?
        .strip_prefix(".r.")?;
    let (tenant, room) = rest.split_once('.')?;
    Some((TenantId::parse(tenant).ok()?, RoomId::parse(room).ok()?))
}

/// Broadcast to every connection of an app, on every gateway.
pub fn tenant(tenant: &TenantId) -> String {
    format!("sb.tenant.{tenant}")
}

/// A user's presence state (for watchers).
pub fn presence(tenant: &TenantId, user: &UserId) -> String {
    format!("sb.presence.{tenant}.{}", user.encoded())
}

/// Whether `s` may be used as a service or op name: lowercase ASCII letters,
/// digits and `_`, starting with a letter, at most 32 bytes.
pub fn is_op_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw() -> GatewayId {
        GatewayId::parse("gw1").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn gateway_control_subjects_round_trip() {
        let g = GatewayId::parse("gw1").unwrap_or_else(|e| panic!("{e}"));
        for cmd in GatewayCommand::ALL {
            let s = gateway_control(&g, cmd);
            assert_eq!(parse_gateway_control(&g, &s), Some(cmd));
            assert_eq!(
                parse_gateway_control_scoped(&g, &gateway_control_all(cmd)),
                Some((cmd, ControlScope::All))
            );
        }
        assert_eq!(gateway_control_all_wildcard(), "sb.ctl.gw.all.*");
        assert_eq!(parse_gateway_control(&g, "sb.ctl.gw.all.reboot"), None);
        assert_eq!(parse_gateway_control(&g, "sb.ctl.gw.allx.stats"), None);
        assert_eq!(gateway_control_wildcard(&g), "sb.ctl.gw.gw1.*");
        assert_eq!(parse_gateway_control(&g, "sb.ctl.gw.gw10.reset"), None);
        assert_eq!(parse_gateway_control(&g, "sb.ctl.gw.gw1.reboot"), None);
        assert_eq!(parse_gateway_control(&g, "sb.ctl.gw.gw1.reset.x"), None);
    }

    #[test]
    fn gateway_subjects_round_trip() {
        let g = gw();
        assert_eq!(
            parse_gateway_subject(&g, &conn(&g, 42)),
            Some(GatewayTarget::Push { conn: 42 })
        );
        assert_eq!(
            parse_gateway_subject(&g, &conn_reply(&g, 42, 7)),
            Some(GatewayTarget::Reply { conn: 42, req: 7 })
        );
        assert_eq!(parse_gateway_subject(&g, "sb.gw.gw2.c.42"), None);
        assert_eq!(parse_gateway_subject(&g, "sb.gw.gw1.c.x"), None);
        assert_eq!(parse_gateway_subject(&g, "sb.gw.gw1.c.1.2.3"), None);
        assert_eq!(parse_gateway_subject(&g, "sb.gw.gw10.c.1"), None);
    }

    #[test]
    fn room_push_subjects_round_trip_and_refuse_anything_else() {
        let g = gw();
        let t = TenantId::parse("app").unwrap_or_else(|e| panic!("{e}"));
        let r = RoomId::parse("r-1").unwrap_or_else(|e| panic!("{e}"));
        let s = room_push(&g, &t, &r);
        assert_eq!(s, "sb.gw.gw1.r.app.r-1");
        assert_eq!(parse_room_push(&g, &s), Some((t.clone(), r.clone())));
        // Not a connection subject, so the router cannot mistake one for the other.
        assert_eq!(parse_gateway_subject(&g, &s), None);
        assert_eq!(parse_room_push(&g, &conn(&g, 1)), None);
        for bad in [
            "sb.gw.gw2.r.app.r-1",
            "sb.gw.gw10.r.app.r-1",
            "sb.gw.gw1.r.app",
            "sb.gw.gw1.r.app.r-1.x",
            "sb.gw.gw1.r.app.*",
            "sb.gw.gw1.r.>.r-1",
            "sb.gw.gw1.r..r-1",
            "sb.gw.gw1.r.app.",
            "sb.room.app.r-1",
        ] {
            assert_eq!(parse_room_push(&g, bad), None, "{bad}");
        }
    }

    #[test]
    fn op_names_cannot_carry_subject_syntax() {
        assert!(is_op_name("join"));
        assert!(is_op_name("read_marker2"));
        for bad in ["", "_replay", "a.b", "*", ">", "Join", "a b", "1x"] {
            assert!(!is_op_name(bad), "{bad:?} accepted");
        }
        assert!(!is_op_name(&"a".repeat(33)));
    }
}
