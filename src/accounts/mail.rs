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
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
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
