//! `syncstore token`: a token as a tokenserver would hand it out.

use clap::Args;
use serde_json::json;

use syncstore::auth::token::{TokenPayload, make_token, new_salt};

use super::{CliError, Common, load};

/// Flags of `token`.
#[derive(Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub common: Common,
    /// The user's numeric id.
    #[arg(long)]
    pub uid: u64,
    /// The storage node's base URL [default: public_url, else http://<listen>]
    #[arg(long, value_name = "URL")]
    pub node: Option<String>,
    /// Token lifetime in seconds [default: token_duration_secs, 3600]
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
}

/// `token`: prints a token for a uid, signed with the configured or stored secret.
pub fn token(args: TokenArgs) -> Result<(), CliError> {
    let mut settings = load(&args.common)?;
    if let Some(path) = settings.ensure_secret()? {
        eprintln!("generated a new master secret in {}", path.display());
    }
    let node = args.node.unwrap_or_else(|| {
        if settings.public_url.is_empty() {
            format!("http://{}", settings.listen)
        } else {
            settings.public_url.clone()
        }
    });
    let node = node.trim_end_matches('/').to_string();
    let duration = args.duration.unwrap_or(settings.token_duration_secs);
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        + duration as f64;
    let payload = TokenPayload {
        uid: args.uid,
        node: node.clone(),
        expires,
        salt: new_salt(),
        fxa_uid: None,
        fxa_kid: None,
        hashed_fxa_uid: None,
        hashed_device_id: None,
    };
    let (id, key) = make_token(&settings.secrets[0], &payload);
    let out = json!({
        "id": id,
        "key": key,
        "uid": args.uid,
        "api_endpoint": format!("{node}/1.5/{}", args.uid),
        "duration": duration,
        "hashalg": "sha256",
    });
    println!("{out}");
    Ok(())
}
