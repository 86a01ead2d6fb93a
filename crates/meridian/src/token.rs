//! `meridian token`: mint a signed dev connection token (HS256 JWT); [`mint`] is also what the
//! drill and the client commands use for their users.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use meridian_protocol::token::{issue, Claims, RoomGrant};
use meridian_protocol::UserId;

/// `meridian token` options.
#[derive(clap::Args, Debug)]
pub struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    user: String,
    /// Room patterns (comma-separated or repeated): `lobby`, `stage/*`, `*`. A pattern may end
    /// in `:publish` to allow publishing in it alone. Without `--rooms`: `*` with publish.
    #[arg(long = "rooms", alias = "room", value_delimiter = ',')]
    rooms: Vec<String>,
    /// Allow publishing (publish, state_set, state_delete) in every pattern given.
    #[arg(long)]
    publish: bool,
    /// Lifetime: `3600`, `90s`, `30m`, `24h`.
    #[arg(long, default_value = "1h", value_parser = crate::duration::parse_duration)]
    ttl: Duration,
    /// Allow direct messages to, and presence of, users who share no room with this one (the
    /// token claim `dm`; for backends and support tools, not ordinary users).
    #[arg(long)]
    dm: bool,
    /// The shared token secret (default: from --state-dir/--endpoints of a local mesh).
    #[arg(long, env = "MERIDIAN_TOKEN_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// The state directory of a running `meridian up` (its token secret).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// `endpoints.json` of a running `meridian up`.
    #[arg(long)]
    endpoints: Option<PathBuf>,
}

/// Prints the token.
pub fn run(t: TokenArgs) -> Result<()> {
    let secret = match (
        &t.secret,
        crate::drill::mesh::load_endpoints(t.endpoints.as_deref(), t.state_dir.as_deref())?,
    ) {
        (Some(s), _) => s.clone(),
        (None, Some(e)) => e.token_secret,
        (None, None) => bail!(
            "no token secret: pass --secret (or MERIDIAN_TOKEN_SECRET), or --state-dir of a \
             running `meridian up`"
        ),
    };
    let rooms: Vec<String> = if t.publish {
        let patterns = if t.rooms.is_empty() {
            vec!["*".to_owned()]
        } else {
            t.rooms.clone()
        };
        patterns
            .into_iter()
            .map(|r| {
                if r.ends_with(":publish") {
                    r
                } else {
                    format!("{r}:publish")
                }
            })
            .collect()
    } else if t.rooms.is_empty() {
        Vec::new()
    } else {
        t.rooms.clone()
    };
    println!(
        "{}",
        mint_with(&t.user, &rooms, t.ttl.as_secs().max(1), &secret, t.dm)?
    );
    Ok(())
}

pub fn mint(user: &str, rooms: &[String], ttl: u64, secret: &str) -> Result<String> {
    mint_with(user, rooms, ttl, secret, false)
}

/// [`mint`], and with `dm` the claim that lets the user send direct messages to, and see the
/// presence of, users it shares no room with (docs/protocol.md `send`).
pub fn mint_with(user: &str, rooms: &[String], ttl: u64, secret: &str, dm: bool) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let grants = if rooms.is_empty() {
        vec![RoomGrant {
            pattern: "*".into(),
            publish: true,
        }]
    } else {
        rooms
            .iter()
            .map(|r| match r.strip_suffix(":publish") {
                Some(p) => RoomGrant {
                    pattern: p.into(),
                    publish: true,
                },
                None => RoomGrant {
                    pattern: r.clone(),
                    publish: false,
                },
            })
            .collect()
    };
    let claims = Claims {
        sub: UserId::new(user).context("--user")?,
        exp: now + ttl,
        rooms: grants,
        nbf: None,
        iat: Some(now),
        dm,
    };
    Ok(issue(secret.as_bytes(), &claims)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_protocol::token::TokenVerifier;

    #[test]
    fn minted_tokens_verify_with_grants() {
        let t = mint(
            "alice",
            &["lobby/*:publish".into(), "stage".into()],
            60,
            "0123456789abcdef",
        )
        .unwrap();
        let c = TokenVerifier::new(b"0123456789abcdef").verify(&t).unwrap();
        assert_eq!(c.rooms.len(), 2);
        assert!(c.rooms[0].publish && !c.rooms[1].publish);
        assert!(mint("bad user", &[], 60, "s").is_err());
        let dm = mint_with("support", &[], 60, "0123456789abcdef", true).unwrap();
        let claims = TokenVerifier::new(b"0123456789abcdef").verify(&dm).unwrap();
        assert!(claims.dm, "--dm sets the claim");
        assert!(!c.dm, "without --dm the claim is off");
    }
}
