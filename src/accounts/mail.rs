//! Verification mail over SMTP (lettre on tokio with rustls): the 6-digit code of a
//! new `open` sign-up. The code is never logged; a failed delivery is an error for the
//! caller (a 503 to the client), never a panic.

use std::time::Duration;

use lettre::message::{Mailbox, header::ContentType};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

/// How long one delivery may take (connect, TLS, the SMTP dialogue).
const SEND_TIMEOUT: Duration = Duration::from_secs(20);

/// Sends the service's mail.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

/// A mail could not be made or sent (the cause, without the code).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct MailError(String);

impl Mailer {
    /// A mailer for `url` (lettre's form: `smtp://user:pass@host:587` with STARTTLS,
    /// `smtps://host:465`, `smtp://host:25?tls=none`) sending as `from`.
    pub fn new(url: &str, from: &str) -> Result<Mailer, MailError> {
        let from: Mailbox = from
            .parse()
            .map_err(|e| MailError(format!("accounts_mail_from: {e}")))?;
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&lettre_url(url)?)
            .map_err(|e| MailError(format!("accounts_smtp_url: {e}")))?
            .timeout(Some(SEND_TIMEOUT))
            .build();
        Ok(Mailer { transport, from })
    }

    /// Mails a verification code to `to`.
    pub async fn send_code(&self, to: &str, code: &str, origin: &str) -> Result<(), MailError> {
        let to: Mailbox = to
            .parse()
            .map_err(|e| MailError(format!("recipient address: {e}")))?;
        let body = format!(
            "Your verification code for Firefox Sync at {origin} is:\r\n\r\n    {code}\r\n\r\n\
             It works for 15 minutes. If you did not create an account there, ignore this \
             message.\r\n"
        );
        let msg = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject("Your Firefox Sync verification code")
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| MailError(format!("building the message: {e}")))?;
        self.transport
            .send(msg)
            .await
            .map(|_| ())
            .map_err(|e| MailError(format!("sending: {e}")))
    }
}

/// lettre's URL for a setting: `smtp://` without `tls` means STARTTLS required (lettre
/// itself would send in the clear), `tls=none` (tests, a relay on localhost) means no
/// TLS; `smtps://` and `tls=required|opportunistic` are lettre's own.
fn lettre_url(url: &str) -> Result<String, MailError> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    let tls = pairs
        .iter()
        .find_map(|p| p.strip_prefix("tls="))
        .map(str::to_string);
    match (base.split_once("://").map(|(s, _)| s), tls.as_deref()) {
        (Some("smtp"), None) => pairs.push("tls=required"),
        (Some("smtp"), Some("none")) => pairs.retain(|p| !p.starts_with("tls=")),
        (Some("smtp" | "smtps"), _) => {}
        _ => {
            return Err(MailError(
                "accounts_smtp_url: expected smtp://… or smtps://…".into(),
            ));
        }
    }
    Ok(if pairs.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", pairs.join("&"))
    })
}

#[cfg(test)]
mod tests {
    use super::lettre_url;

    #[test]
    fn plain_smtp_means_starttls_unless_tls_none() {
        let u = |s| lettre_url(s).unwrap();
        assert_eq!(u("smtp://u:p@h:587"), "smtp://u:p@h:587?tls=required");
        assert_eq!(u("smtp://h:25?tls=none"), "smtp://h:25");
        assert_eq!(
            u("smtp://h?tls=opportunistic"),
            "smtp://h?tls=opportunistic"
        );
        assert_eq!(u("smtps://u:p@h"), "smtps://u:p@h");
        assert!(lettre_url("http://h").is_err());
    }
}
