//! `axle user …` and `axle ban …`: the offline admin commands. They open the metadata store
//! directly (so the broker must be stopped) and call the same library functions the running
//! broker uses.

use std::io::{BufRead, IsTerminal};
use std::sync::Arc;

use anyhow::{bail, Context};
use axle_broker::auth::bans::{Ban, BanTarget, Bans};
use axle_broker::auth::users::Users;
use axle_broker::auth::{now_ms, open_offline};
use axle_broker::cli::{BanCommand, BanTargetArgs, StoreArgs, UserCommand};
use axle_engine::MetaStore;

fn open(store: &StoreArgs) -> anyhow::Result<Arc<MetaStore>> {
    Ok(open_offline(&store.load_config()?.data_dir)?)
}

fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).context("reading the password from standard input")?;
        let pw = line.strip_suffix('\n').map(|l| l.strip_suffix('\r').unwrap_or(l)).unwrap_or(&line);
        return Ok(pw.to_string());
    }
    if !std::io::stdin().is_terminal() {
        bail!("standard input is not a terminal: pass --password-stdin to read the password from it");
    }
    let first = rpassword::prompt_password("Password: ").context("reading the password")?;
    let again = rpassword::prompt_password("Password (again): ").context("reading the password")?;
    if first != again {
        bail!("the passwords differ; nothing changed");
    }
    Ok(first)
}

pub fn user(cmd: UserCommand) -> anyhow::Result<()> {
    match cmd {
        UserCommand::Add { name, password_stdin, store } => {
            let password = read_password(password_stdin)?;
            let users = Users::new(open(&store)?);
            let existed = users.add(&name, password.as_bytes())?;
            println!("{} user {name}", if existed { "updated" } else { "added" });
        }
        UserCommand::Del { name, store } => {
            if !Users::new(open(&store)?).remove(&name)? {
                bail!("no user {name:?}");
            }
            println!("deleted user {name}");
        }
        UserCommand::List { store } => {
            for name in Users::new(open(&store)?).list()? {
                println!("{name}");
            }
        }
    }
    Ok(())
}

fn target(t: &BanTargetArgs) -> anyhow::Result<BanTarget> {
    Ok(match (&t.client_id, &t.username, &t.ip) {
        (Some(c), _, _) => BanTarget::ClientId(c.clone()),
        (_, Some(u), _) => BanTarget::Username(u.clone()),
        (_, _, Some(ip)) => BanTarget::ip(ip)?,
        _ => bail!("name one of --client-id, --username or --ip"),
    })
}

pub fn ban(cmd: BanCommand) -> anyhow::Result<()> {
    match cmd {
        BanCommand::Add { target: t, duration, reason, store } => {
            let bans = Bans::open(open(&store)?)?;
            let now = now_ms();
            let until_ms = duration.map(|d| now.saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)));
            let target = target(&t)?;
            bans.add(Ban { target: target.clone(), until_ms, reason, created_ms: now })?;
            match duration {
                Some(d) => println!("banned {target} for {} s", d.as_secs()),
                None => println!("banned {target} until removed"),
            }
        }
        BanCommand::Del { target: t, store } => {
            let bans = Bans::open(open(&store)?)?;
            let target = target(&t)?;
            if !bans.remove(&target)? {
                bail!("no ban on {target}");
            }
            println!("lifted the ban on {target}");
        }
        BanCommand::List { store } => {
            let now = now_ms();
            for b in Bans::open(open(&store)?)?.list(now)? {
                let until = match b.until_ms {
                    Some(u) => format!("expires in {} s", (u - now).max(0) / 1000),
                    None => "permanent".to_string(),
                };
                println!("{}\t{until}\t{}", b.target, b.reason.unwrap_or_default());
            }
        }
    }
    Ok(())
}
