//! The call log: one line per call when it ends, at INFO under the target `protodrop::call`;
//! at WARN when no rule matched or a script failed, with the reason. The format (text or JSON) is
//! the process's tracing subscriber's (`--log-format`); `RUST_LOG=info,protodrop::call=warn` keeps only the WARN lines, `=off` none.

use std::time::Duration;

use tonic::Code;

use super::Protocol;
use crate::engine::Method;
use crate::rules::Answer;

/// What the line of one call says.
pub(super) struct Line<'a> {
    pub protocol: Protocol,
    pub method: &'a Method,
    pub peer: Option<std::net::SocketAddr>,
    pub code: Code,
    pub message: &'a str,
    /// The first rule that answered.
    pub rule: Option<usize>,
    pub unmatched: bool,
    pub elapsed: Duration,
}

/// Whether any call's line may be written: at WARN (no rule matched, a script failed) when not
/// at INFO (every call). Tracing caches the answer per call site.
pub(super) fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::WARN)
}

pub(super) fn call_ended(line: Line<'_>) {
    if !enabled() {
        return;
    }
    let Line {
        protocol,
        method: served,
        peer,
        code,
        message,
        rule,
        unmatched,
        elapsed,
    } = line;
    let method = served.name.as_str();
    let protocol = protocol.as_str();
    let code = crate::codes::name(code);
    let mut peer_text = [0; 21];
    let peer = peer_str(peer, &mut peer_text);
    let peer = peer.as_ref();
    let elapsed_us = elapsed.as_micros() as u64;
    let rule_text = rule.map(|i| served.rule_origin(i));
    if unmatched || served.rules.is_none() {
        let rules = served.rules.as_ref();
        let tried: Vec<&str> = rules.map_or(Vec::new(), |r| {
            r.rules.iter().map(|r| r.origin.as_str()).collect()
        });
        let reason = if rules.is_none() {
            "no handler file has a rule for this method"
        } else {
            "no rule matched"
        };
        let tried = tried.join(", ");
        tracing::warn!(target: TARGET, protocol, method, code, rule = "none", tried = tried.as_str(), elapsed_us, peer, reason, "call not answered by a rule");
        return;
    }
    let scripted = rule.is_some_and(|i| {
        served
            .rules
            .as_ref()
            .and_then(|r| r.rules.get(i))
            .is_some_and(|r| matches!(r.answer, Answer::Script(_)))
    });
    if scripted && code != "OK" && message.starts_with("script ") {
        tracing::warn!(target: TARGET, protocol, method, code, rule = rule_text.unwrap_or(""), elapsed_us, peer, reason = message, "script failed");
        return;
    }
    tracing::info!(target: TARGET, protocol, method, code, rule = rule_text.unwrap_or(""), elapsed_us, peer, "call");
}

/// A client's address as text, or `-` when not known: an IPv4 one written into `buf` by hand (the
/// formatting machinery costs a call's log line a third of its time), any other formatted.
fn peer_str(peer: Option<std::net::SocketAddr>, buf: &mut [u8; 21]) -> std::borrow::Cow<'_, str> {
    let Some(peer) = peer else {
        return "-".into();
    };
    let std::net::SocketAddr::V4(v4) = peer else {
        return peer.to_string().into();
    };
    let mut at = 0;
    let mut put = |text: &[u8], at: &mut usize| {
        buf[*at..*at + text.len()].copy_from_slice(text);
        *at += text.len();
    };
    for (i, octet) in v4.ip().octets().iter().enumerate() {
        let mut digits = [0; 20];
        put(decimal(u64::from(*octet), &mut digits).as_bytes(), &mut at);
        put(if i < 3 { b"." } else { b":" }, &mut at);
    }
    let mut digits = [0; 20];
    put(
        decimal(u64::from(v4.port()), &mut digits).as_bytes(),
        &mut at,
    );
    std::str::from_utf8(&buf[..at]).unwrap_or("-").into()
}

/// `n` in decimal, written into the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[at..]).unwrap_or("0")
}

/// The text log format: tracing-subscriber's own for every line but a call's, which is written
/// here field by field as the event hands them over (`grpc pkg.S/M OK rule=… elapsed_us=… peer=…`):
/// the general formatter costs a call more than answering it does.
pub(crate) struct TextFormat {
    general: tracing_subscriber::fmt::format::Format,
}

impl TextFormat {
    pub(crate) fn new(ansi: bool) -> TextFormat {
        TextFormat {
            general: tracing_subscriber::fmt::format::Format::default().with_ansi(ansi),
        }
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for TextFormat
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        if meta.target() != TARGET {
            return self.general.format_event(ctx, writer, event);
        }
        let level = if *meta.level() == tracing::Level::WARN {
            "  WARN"
        } else {
            "  INFO"
        };
        write_now(&mut writer)?;
        write!(writer, "{level} {TARGET}:")?;
        let mut fields = CallFields {
            writer: &mut writer,
            result: Ok(()),
        };
        event.record(&mut fields);
        fields.result?;
        writer.write_char('\n')
    }
}

pub(super) const TARGET: &str = "protodrop::call";

/// The time as RFC 3339 with microseconds, as tracing-subscriber writes it; the part up to the
/// second is formatted once a second per thread.
fn write_now(writer: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
    use std::cell::RefCell;
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = std::time::SystemTime::now();
    let since = now
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let micros = since.subsec_micros();
    SECOND.with_borrow_mut(|(second, text)| {
        if *second != since.as_secs() {
            *second = since.as_secs();
            let whole = now - std::time::Duration::from_micros(micros.into());
            *text = humantime::format_rfc3339_seconds(whole).to_string();
            text.pop(); // the `Z`
        }
        let mut digits = [b'0'; 6];
        let mut n = micros;
        for d in digits.iter_mut().rev() {
            *d = b'0' + (n % 10) as u8;
            n /= 10;
        }
        writer.write_str(text)?;
        writer.write_char('.')?;
        writer.write_str(std::str::from_utf8(&digits).unwrap_or("000000"))?;
        writer.write_char('Z')
    })
}

/// Writes a call's fields as they come: the first three (protocol, method, code) bare, the others
/// as `name=value`; the event's message is left out (every call line would say the same).
struct CallFields<'w, 'b> {
    writer: &'w mut tracing_subscriber::fmt::format::Writer<'b>,
    result: std::fmt::Result,
}

impl CallFields<'_, '_> {
    fn name(&mut self, field: &tracing::field::Field) -> std::fmt::Result {
        match field.name() {
            "protocol" | "method" | "code" => self.writer.write_char(' '),
            name => {
                self.writer.write_char(' ')?;
                self.writer.write_str(name)?;
                self.writer.write_char('=')
            }
        }
    }
}

impl tracing::field::Visit for CallFields<'_, '_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if self.result.is_ok() && field.name() != "message" {
            self.result = self.name(field).and_then(|()| match field.name() {
                "reason" | "tried" => write!(self.writer, "{value:?}"),
                _ => self.writer.write_str(value),
            });
        }
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if self.result.is_ok() {
            let mut digits = [0; 20];
            let text = decimal(value, &mut digits);
            self.result = self.name(field).and_then(|()| self.writer.write_str(text));
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if self.result.is_ok() && field.name() != "message" {
            self.result = self
                .name(field)
                .and_then(|()| write!(self.writer, "{value:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{decimal, peer_str};

    #[test]
    fn a_peer_is_written_as_std_writes_it() {
        for addr in [
            "10.0.0.255:8080",
            "127.0.0.1:0",
            "255.255.255.255:65535",
            "[::1]:5",
        ] {
            let mut buf = [0; 21];
            assert_eq!(peer_str(Some(addr.parse().unwrap()), &mut buf), addr);
        }
        assert_eq!(peer_str(None, &mut [0; 21]), "-");
        for n in [0, 7, 10, 1234567890, u64::MAX] {
            assert_eq!(decimal(n, &mut [0; 20]), n.to_string());
        }
    }
}
